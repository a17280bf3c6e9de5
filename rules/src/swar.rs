//! Byte searches eight bytes at a time, for the scans every statement
//! passes through (the session-command pre-check, a shape's lead).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The first byte of `b` from `from` on that is in `set`: a byte `c` is
/// when `c ^ x < n` for one of its `(x, n)` (`(b';', 1)` is `;`,
/// `(b'0', 10)` the ten digits); every `n` is at most 128. Generic over
/// the set's size so that each caller gets its own unrolled copy.
#[inline]
pub fn find<const N: usize>(b: &[u8], from: usize, set: [(u8, u8); N]) -> Option<usize> {
    // A byte below `n` gets its high bit set; a byte above one may too (a
    // borrow), never one below, so the lowest flag is the first match.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let rest = b.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut at = from;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let found = set
            .iter()
            .fold(0, |f, &(x, n)| f | below(v ^ (ONES * u64::from(x)), n));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    let hit = |c: u8| set.iter().any(|&(x, n)| c ^ x < n);
    tail.iter().position(|&c| hit(c)).map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The same answer as looking at one byte at a time, whatever the
        /// bytes (high ones included) and wherever the search starts.
        #[test]
        fn finds_what_a_plain_search_finds(
            b in proptest::collection::vec(any::<u8>(), 0..40),
            from in 0usize..45,
            which in 0usize..3,
        ) {
            let plain = |set: &[(u8, u8)]| b
                .get(from..)
                .and_then(|r| r.iter().position(|&c| set.iter().any(|&(x, n)| c ^ x < n)))
                .map(|p| p + from);
            let (a, b2) = match which {
                0 => (find(&b, from, [(b';', 1), (b'_', 1)]), plain(&[(b';', 1), (b'_', 1)])),
                1 => (find(&b, from, [(b'\'', 1), (b'0', 10)]), plain(&[(b'\'', 1), (b'0', 10)])),
                _ => (find(&b, from, []), plain(&[])),
            };
            prop_assert_eq!(a, b2);
        }
    }

    #[test]
    fn digits_and_quotes() {
        let set = [(b'\'', 1), (b'0', 10)];
        assert_eq!(find(b"select a from t where b = 'x'", 0, set), Some(26));
        assert_eq!(find(b"select a:b/c from t where b = x9", 0, set), Some(31));
        assert_eq!(find(b"select ab", 0, set), None);
    }
}
