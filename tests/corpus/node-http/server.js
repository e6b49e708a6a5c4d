// Node's own http module: one event loop (libuv on epoll), with V8's and libuv's helper threads.
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");
const root = process.env.DOCROOT || "/srv/www";
http.createServer((request, response) => {
  fs.readFile(path.join(root, request.url === "/" ? "index.html" : request.url), (error, body) => {
    response.writeHead(error ? 404 : 200);
    response.end(error ? "not found\n" : body);
  });
}).listen(Number(process.env.PORT || 8080), "0.0.0.0");
