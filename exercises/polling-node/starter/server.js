// Starter: it listens and answers every request with 501 Not Implemented.
//
// Your task (see README.md): keep each client's request until its blank line (it may come in
// pieces), then answer GET of files under $DOCROOT (default /srv/www): 200 with the file, 404
// when there is none, 400 for a request that is not a valid GET. Never block the event loop.
// Run it locally with:  labctl test polling-node --submission <this folder>
"use strict";
const net = require("net");

const PORT = Number(process.env.PORT || 8080);

const server = net.createServer((socket) => {
  socket.on("data", () => {
    // TODO: keep the request until "\r\n\r\n", then find the file and answer 200 / 404 / 400.
    socket.end("HTTP/1.0 501 Not Implemented\r\nContent-Length: 0\r\n\r\n");
  });
  socket.on("error", () => socket.destroy());
});
server.listen(PORT, "0.0.0.0", () => console.log(`starter on port ${PORT}`));
