"""Grading a whole class: `labctl batch` (many submissions, a gradebook, a class page) and the grading farm
(`labctl worker`, `labctl batch --farm`). One job (labctl.batch.job) is one student's grading, wherever it runs."""
