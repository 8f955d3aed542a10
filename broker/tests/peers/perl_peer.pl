#!/usr/bin/perl
# Perl Gearman::Client / Gearman::Worker (Debian libgearman-client-perl) as interop peers.
# usage: perl_peer.pl client HOST:PORT FUNCTION PAYLOAD   -> prints RESULT <x> or FAIL
#        perl_peer.pl background HOST:PORT FUNCTION PAYLOAD -> prints HANDLE <h>
#        perl_peer.pl worker HOST:PORT FUNCTION COUNT     -> upper-cases COUNT jobs
use strict;
use warnings;
use Gearman::Client;
use Gearman::Worker;

my ($mode, $server, $function, $arg) = @ARGV;
if ($mode eq 'client') {
    my $client = Gearman::Client->new(job_servers => [$server]);
    my $result = $client->do_task($function, $arg, { timeout => 20 });
    print defined $result ? "RESULT $$result\n" : "FAIL\n";
} elsif ($mode eq 'background') {
    my $client = Gearman::Client->new(job_servers => [$server]);
    my $handle = $client->dispatch_background($function, $arg);
    print defined $handle ? "HANDLE $handle\n" : "FAIL\n";
} elsif ($mode eq 'worker') {
    my $worker = Gearman::Worker->new(job_servers => [$server]);
    my $left = $arg;
    $worker->register_function($function => sub { $left--; return uc $_[0]->arg; });
    $worker->work(stop_if => sub { $left <= 0 });
    print "WORKER DONE\n";
} else {
    die "unknown mode $mode\n";
}
