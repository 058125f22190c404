// uint8 and bool, one element per u32 word: uint8 results wrap to 8 bits; bool is 0 or 1.
fn wrap(x: u32) -> u32 { return x & 255u; }
fn maximum_nan(x: u32, y: u32) -> u32 { return max(x, y); }
fn sign_np(x: u32) -> u32 { return select(0u, 1u, x > 0u); }
fn neg_np(x: u32) -> u32 { return wrap(0u - x); }
fn abs_np(x: u32) -> u32 { return x; }
