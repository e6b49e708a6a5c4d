# Ruby's WEBrick: a new Ruby thread for each connection. Ruby keeps a finished thread's native
# thread a while for the next one, so after a burst the kernel sees threads that existed before
# the clients came serving them: the classifier must still say a thread per client.
require "webrick"
server = WEBrick::HTTPServer.new(Port: 8080, BindAddress: "0.0.0.0", DocumentRoot: "/srv/www",
                                 AccessLog: [], Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN))
server.start
