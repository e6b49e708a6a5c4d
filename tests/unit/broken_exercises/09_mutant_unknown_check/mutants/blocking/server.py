# placeholder: only the folder matters to the loader
