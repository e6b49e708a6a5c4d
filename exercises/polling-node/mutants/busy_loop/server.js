// Mutant, WRONG on purpose: the solution, plus a callback that schedules itself again at once
// (setImmediate): the event loop always has work, so it never sleeps in epoll and burns a CPU.
"use strict";
const fs = require("fs");
const net = require("net");
const path = require("path");

const PORT = Number(process.env.PORT || 8080);
const DOCROOT = path.resolve(process.env.DOCROOT || "/srv/www");
const MAX_REQUEST = 8192;
const REASONS = { 200: "OK", 400: "Bad Request", 404: "Not Found" };
const TYPES = { ".html": "text/html", ".txt": "text/plain", ".css": "text/css", ".js": "text/javascript" };

function respond(socket, status, body, type = "text/plain") {
  socket.end(Buffer.concat([
    Buffer.from(`HTTP/1.0 ${status} ${REASONS[status]}\r\nContent-Type: ${type}\r\n` +
                `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`),
    body]));  // end() queues what the socket cannot take now and writes it as it drains
}

function answer(socket, request) {
  const line = request.toString("latin1").split("\r\n", 1)[0];
  const parts = line.split(" ");
  if (parts.length !== 3 || parts[0] !== "GET" || !parts[1].startsWith("/") || !parts[2].startsWith("HTTP/1.")) {
    return respond(socket, 400, Buffer.from("bad request\n"));
  }
  let file = path.resolve(DOCROOT, "." + decodeURIComponent(parts[1]));
  if (file !== DOCROOT && !file.startsWith(DOCROOT + path.sep)) {
    return respond(socket, 404, Buffer.from("not found\n"));
  }
  fs.stat(file, (error, stats) => {
    if (!error && stats.isDirectory()) file = path.join(file, "index.html");
    fs.readFile(file, (readError, body) => {
      if (readError) return respond(socket, 404, Buffer.from("not found\n"));
      respond(socket, 200, body, TYPES[path.extname(file)] || "application/octet-stream");
    });
  });
}

const server = net.createServer((socket) => {
  let request = Buffer.alloc(0);
  let answered = false;
  socket.on("data", (chunk) => {
    if (answered) return;
    request = Buffer.concat([request, chunk]);  // a request may come a few bytes at a time
    if (request.includes("\r\n\r\n")) {
      answered = true;
      answer(socket, request);
    } else if (request.length > MAX_REQUEST) {
      answered = true;
      respond(socket, 400, Buffer.from("request too large\n"));
    }
  });
  socket.on("error", () => socket.destroy());  // a client that resets: forget it, serve the others
});
function spin() {
  setImmediate(spin);  // "check for something to do" forever: a busy loop wearing event-loop clothes
}
spin();

server.listen({ port: PORT, host: "0.0.0.0", backlog: 1024 }, () => {
  console.log(`node event loop on port ${PORT}, serving ${DOCROOT}`);
});
