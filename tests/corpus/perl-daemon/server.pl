# Perl's HTTP::Daemon, the loop its manual shows: one connection at a time, in one process.
use HTTP::Daemon;
$SIG{PIPE} = "IGNORE";  # a client that gave up must not kill the server
my $d = HTTP::Daemon->new(LocalAddr => "0.0.0.0", LocalPort => 8080, ReuseAddr => 1, Listen => 64) or die;
while (1) {
    my $c = $d->accept or next;
    while (my $r = $c->get_request) { $c->send_file_response("/srv/www/index.html"); }
    $c->close;
    undef($c);
}
