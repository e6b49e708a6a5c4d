"""A server that leaves a daemon behind: before it listens it double-forks a child into a session of its
own (the classic way out of a process tree), which sleeps for an hour. It prints that daemon's pid.
A lab must end the daemon with itself, wherever it went."""
import os
import socket
import time

reader, writer = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(writer, str(os.getpid()).encode())
        os.close(writer)
        time.sleep(3600)
        os._exit(0)
    os._exit(0)
os.close(writer)
os.wait()
print(f"daemon {os.read(reader, 32).decode()}", flush=True)

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
listener.listen(16)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
