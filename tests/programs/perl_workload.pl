#!/usr/bin/perl
# Allocation-heavy Perl workload with deterministic output (tests/programs.rs
# compares its stdout under glibc and under LD_PRELOAD=librmalloc.so).
# Hashes, arrays, string building, regexes, sorting, sprintf, references,
# and ithreads (each thread clones the interpreter: a burst of mallocs).
use strict;
use warnings;
use threads;
use Digest::MD5 qw(md5_hex);

# Deterministic PRNG (perl's rand() seeding differs between builds).
my $state = 12345;
sub rnd { $state = ($state * 1103515245 + 12345) % 2147483648; return $state % $_[0]; }

# 1. Hash churn: insert/delete/grow, values of mixed sizes.
my %h;
for my $i (1 .. 200_000) {
    my $k = "key" . rnd(50_000);
    if (rnd(10) < 6) { $h{$k} = ("x" x rnd(200)) . $i; }
    else             { delete $h{$k}; }
}
my $hd = md5_hex(join "\n", map { "$_=$h{$_}" } sort keys %h);
printf "hash keys=%d md5=%s\n", scalar(keys %h), $hd;

# 2. Arrays of arrays, splice, sort with custom comparator.
my @rows;
push @rows, [ rnd(1000), "name" . rnd(100_000), [ map { rnd(100) } 1 .. rnd(20) ] ] for 1 .. 50_000;
splice(@rows, 1000, 20_000);
my @sorted = sort { $a->[0] <=> $b->[0] or $a->[1] cmp $b->[1] } @rows;
my $sum = 0;
$sum += $_ for map { scalar @{ $_->[2] } } @sorted;
printf "rows=%d first=%s last=%s inner=%d\n", scalar @sorted, $sorted[0][1], $sorted[-1][1], $sum;

# 3. String growth, regex substitution and split/join.
my $text = "";
$text .= sprintf("%05d:%s;", $_, join(",", map { chr(97 + ($_ * 7) % 26) x ($_ % 5 + 1) } 1 .. 12)) for 1 .. 20_000;
(my $t2 = $text) =~ s/([aeiou])+/uc $1/ge;
my @parts = split /;/, $t2;
my %count;
$count{$_}++ for map { /(\w)/ ? $1 : "" } @parts;
printf "text len=%d subst len=%d parts=%d md5=%s\n", length $text, length $t2, scalar @parts, md5_hex($t2);
print join(" ", map { "$_:$count{$_}" } sort keys %count), "\n";

# 4. Big strings (above the mmap threshold) grown and shrunk.
my @big;
for my $n (1 .. 12) {
    my $s = "ab" x (100_000 * $n);
    $s .= $s;
    substr($s, 1000, 50_000) = "";
    push @big, $s;
    shift @big if @big > 4;
}
printf "big lens=%s md5=%s\n", join(",", map { length } @big), md5_hex(join "", @big);

# 5. ithreads: interpreter clones, per-thread allocation, results joined in order.
sub work {
    my ($seed) = @_;
    my %local;
    my $x = $seed;
    for (1 .. 40_000) {
        $x = ($x * 69069 + 1) % 4294967296;
        $local{ $x % 5000 } .= chr(65 + $x % 26);
    }
    return md5_hex(join ",", map { "$_=$local{$_}" } sort { $a <=> $b } keys %local);
}
my @thr = map { threads->create(\&work, $_) } 1 .. 6;
print "thread $_ ", $thr[$_ - 1]->join, "\n" for 1 .. 6;
print "done\n";
