# Allocation-heavy Perl: a text-processing job (build a corpus, tokenize it,
# count words in hashes, build nested structures, sort, join and substitute).
# Deterministic: its own generator, sorted hash keys, digests only.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $scale = @ARGV ? $ARGV[0] : 1;
my $seed = 42;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed % $_[0]; }

my @letters = ('a' .. 'z');
my @words = map { join '', map { $letters[rnd(26)] } 1 .. (3 + rnd(10)) } 1 .. 4000;
my $ctx = Digest::MD5->new;

for my $round (1 .. 3) {
    my @lines;
    for my $i (1 .. int(8000 * $scale) || 500) {
        push @lines, join ' ', map { $words[rnd(scalar @words)] } 1 .. (4 + rnd(40));
    }
    my (%count, %index);
    for my $n (0 .. $#lines) {
        for my $w (split / /, $lines[$n]) {
            $count{$w}++;
            push @{ $index{substr($w, 0, 2)} }, $n if rnd(4) == 0;
        }
    }
    my @top = (sort { $count{$b} <=> $count{$a} || $a cmp $b } keys %count)[0 .. 49];
    $ctx->add(join ',', map { "$_=$count{$_}" } @top);
    $ctx->add(join ';', map { "$_:" . scalar(@{ $index{$_} }) } sort keys %index);

    my $text = join "\n", @lines;
    (my $upper = $text) =~ s/\b(\w)(\w*)/\U$1\E$2/g;
    $ctx->add(length($upper) . md5_hex($upper));

    my %records = map { ("k$_" => { id => $_, line => $lines[$_], words => [split / /, $lines[$_]] }) } 0 .. $#lines;
    my $total = 0;
    $total += scalar @{ $records{$_}{words} } for sort keys %records;
    $ctx->add($total);
}
print "perl digest ", $ctx->hexdigest, "\n";
