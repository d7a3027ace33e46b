#!/usr/bin/perl
# farm's sinkhole resolver (farm.sinkhole): runs inside a build's sandbox, never on a
# network. Answers every A query with a unique address of 198.18.0.0/15 and every AAAA
# query with one of 2001:2::/48 (both reserved for benchmarking: nothing answers there),
# the same index n for the same name, and appends "n<TAB>name" to LOGDIR/names once
# per new name. Any other query gets an empty answer; a malformed one, no answer.
#
# Usage (as root, with an empty environment):
#   sinkhole-resolver.pl ADDR PORT LOGDIR UID [READY_SECONDS]
# It binds ADDR:PORT, drops to UID (gid UID, no groups), then writes LOGDIR/ready with
# "pid port", prints the same line and closes its stdout: pid 1's child waits for that
# close (farm.sinkhole.init_argv). Not ready within READY_SECONDS, it prints its pid
# alone and closes its stdout (the build starts), but keeps going: its "ready" line then
# ends in "late" (farm refuses to cache such a build: queries before it bound are lost).
# UID 0 keeps the caller's user (the unit tests). Perl core modules only (perl-base is in
# every Debian image).
use strict;
use warnings;
use Socket qw(AF_INET SOCK_DGRAM inet_aton pack_sockaddr_in unpack_sockaddr_in);
use POSIX ();

my ($addr, $port, $dir, $uid, $patience) = @ARGV;
die "usage: $0 ADDR PORT LOGDIR UID [READY_SECONDS]\n" unless defined $uid;
my $late = 0;
$SIG{ALRM} = sub { $late = 1; print STDOUT "$$\n"; close(STDOUT) };    # the build starts
alarm($patience) if $patience;
my $MAX_NAMES = 65536;    # 198.18.0.0/15 holds 131072; the log stays bounded
my $MAX_PACKET = 512;

socket(my $sock, AF_INET, SOCK_DGRAM, 0) or die "socket: $!\n";
bind($sock, pack_sockaddr_in($port, inet_aton($addr))) or die "bind $addr:$port: $!\n";
my ($bound) = unpack_sockaddr_in(getsockname($sock));
if ($uid) {
    POSIX::setgid($uid) or die "setgid: $!\n";
    $) = "$uid $uid";
    POSIX::setuid($uid) or die "setuid: $!\n";
    die "still privileged\n" if $< == 0 || $> == 0;
}
open(my $log, '>>', "$dir/names") or die "open $dir/names: $!\n";
$log->autoflush(1);
alarm(0);    # before "ready": a late alarm must not leave it claiming an on-time start
open(my $ready, '>', "$dir/ready.tmp") or die "open ready: $!\n";
print $ready $late ? "$$ $bound late\n" : "$$ $bound\n";
close($ready);
rename("$dir/ready.tmp", "$dir/ready") or die "rename: $!\n";
unless ($late) {
    print STDOUT "$$ $bound\n";
    close(STDOUT);    # the waiting shell's pipe: ready
}

my %index;
my $next = 1;
while (1) {
    my $peer = recv($sock, my $query, $MAX_PACKET, 0);
    next unless defined $peer;
    my $reply = answer($query);
    send($sock, $reply, 0, $peer) if defined $reply;
}

# The question's name (lower case, each byte outside [a-z0-9_-] as \xHH, labels joined
# with "."), its type and class, and the offset after it; () when malformed.
sub question {
    my ($q) = @_;
    my ($pos, @labels) = (12);
    while (1) {
        return if $pos >= length($q);
        my $len = ord(substr($q, $pos, 1));
        $pos++;
        last if $len == 0;
        return if $len > 63 || $pos + $len > length($q);    # no compression in a query
        my $label = lc substr($q, $pos, $len);
        $label =~ s/([^a-z0-9_-])/sprintf("\\x%02x", ord($1))/ge;
        push @labels, $label;
        $pos += $len;
    }
    return if $pos + 4 > length($q);
    my ($type, $class) = unpack('nn', substr($q, $pos, 4));
    return (join('.', @labels), $type, $class, $pos + 4);
}

sub index_of {
    my ($name) = @_;
    return $index{$name} if exists $index{$name};
    return 0 if $next > $MAX_NAMES;
    $index{$name} = $next++;
    print $log "$index{$name}\t$name\n";
    return $index{$name};
}

sub answer {
    my ($q) = @_;
    return if length($q) < 12;
    my ($id, $flags, $qd) = unpack('nnn', $q);
    return if ($flags & 0x8000) || $qd != 1 || (($flags >> 11) & 0xF) != 0;
    my ($name, $type, $class, $end) = question($q);
    return unless defined $end;
    my $rd = $flags & 0x0100;
    my $question = substr($q, 12, $end - 12);
    my $rdata;
    if ($class == 1 && ($type == 1 || $type == 28) && $name ne '') {
        my $n = index_of($name);
        return pack('nnnnnn', $id, 0x8082 | $rd, 1, 0, 0, 0) . $question unless $n;    # SERVFAIL
        $rdata = $type == 1
            ? pack('CCn', 198, 18 + ($n >> 16), $n & 0xFFFF)
            : pack('nnnnnnnn', 0x2001, 2, 0, 0, 0, 0, $n >> 16, $n & 0xFFFF);
    }
    my $head = pack('nnnnnn', $id, 0x8080 | $rd, 1, defined $rdata ? 1 : 0, 0, 0);
    return $head . $question unless defined $rdata;
    return $head . $question . pack('nnnNn', 0xC00C, $type, 1, 0, length $rdata) . $rdata;
}
