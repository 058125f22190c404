// int32, int64: WGSL's integer arithmetic wraps around (two's complement), as NumPy's does.
fn wrap(x: $T) -> $T { return x; }
fn maximum_nan(x: $T, y: $T) -> $T { return select(y, x, x > y); }
fn sign_np(x: $T) -> $T { return select(select($T(0), $T(-1), x < $T(0)), $T(1), x > $T(0)); }
// abs and - of the most negative value are that value (wrapping), as in NumPy.
fn neg_np(x: $T) -> $T { return $T(0) - x; }
fn abs_np(x: $T) -> $T { return select(x, neg_np(x), x < $T(0)); }
