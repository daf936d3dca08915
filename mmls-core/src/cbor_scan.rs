//! A walk over the headers of one CBOR item, refusing it before anything is
//! decoded if its element counts, lengths or nesting exceed limits.
//!
//! serde decoders build every element an array header announces before any
//! check of ours runs after them: a 60 MB file of one-byte empty byte
//! strings decodes into 60 million `Vec`s (1.5 GB). Headers are cheap to
//! read and say everything that costs memory, so a pre-scan of them bounds
//! what the decoder may build. It allocates nothing but its nesting stack
//! (bounded by `max_depth`) and does not validate beyond the headers: the
//! decoder that follows still judges the content.

/// What one item may contain, at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Data items in all (every array, map, string, number counts one).
    pub(crate) max_items: usize,
    /// Elements of one array (entries of one map count two).
    pub(crate) max_elements: u64,
    /// Arrays, maps and tags inside each other.
    pub(crate) max_depth: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("more than {0} CBOR items")]
    TooManyItems(usize),
    #[error("a CBOR array or map of {len} elements (at most {limit})")]
    TooManyElements { len: u64, limit: u64 },
    #[error("CBOR nested deeper than {0}")]
    TooDeep(usize),
    #[error("CBOR cut short")]
    Truncated,
    #[error("not valid CBOR: {0}")]
    Invalid(&'static str),
}

/// Scans the first CBOR item of `bytes` (what a reader-based decoder would
/// read). Returns how many items it holds.
pub(crate) fn scan(bytes: &[u8], lim: &Limits) -> Result<usize, ScanError> {
    // Open containers: Some(children left) when definite, None when they
    // run to a break byte.
    let mut open: Vec<Option<u64>> = vec![];
    let mut pos = 0usize;
    let mut items = 0usize;
    loop {
        let b = *bytes.get(pos).ok_or(ScanError::Truncated)?;
        pos += 1;
        if b == 0xff {
            // A break closes the innermost indefinite container, which is
            // then one complete item of its parent.
            if open.pop() != Some(None) {
                return Err(ScanError::Invalid("break outside an indefinite item"));
            }
        } else {
            items += 1;
            if items > lim.max_items {
                return Err(ScanError::TooManyItems(lim.max_items));
            }
            let (major, info) = (b >> 5, b & 0x1f);
            let arg = match info {
                0..=23 => Some(u64::from(info)),
                24..=27 => {
                    let n = 1usize << (info - 24);
                    let raw = bytes.get(pos..pos + n).ok_or(ScanError::Truncated)?;
                    pos += n;
                    Some(raw.iter().fold(0u64, |a, x| a << 8 | u64::from(*x)))
                }
                31 => None,
                _ => return Err(ScanError::Invalid("reserved additional information")),
            };
            let left = (bytes.len() - pos) as u64;
            let children = match (major, arg) {
                (0 | 1 | 7, Some(_)) => 0,
                (2 | 3, Some(len)) => {
                    if len > left {
                        return Err(ScanError::Truncated);
                    }
                    pos += len as usize;
                    0
                }
                (2..=5, None) => {
                    open.push(None);
                    if open.len() > lim.max_depth {
                        return Err(ScanError::TooDeep(lim.max_depth));
                    }
                    continue;
                }
                (4 | 5, Some(n)) => {
                    let len = if major == 5 { n.saturating_mul(2) } else { n };
                    if len > lim.max_elements {
                        return Err(ScanError::TooManyElements {
                            len,
                            limit: lim.max_elements,
                        });
                    }
                    // Each element takes at least a byte.
                    if len > left {
                        return Err(ScanError::Truncated);
                    }
                    len
                }
                (6, Some(_)) => 1,
                _ => return Err(ScanError::Invalid("indefinite length on a scalar")),
            };
            if children > 0 {
                open.push(Some(children));
                if open.len() > lim.max_depth {
                    return Err(ScanError::TooDeep(lim.max_depth));
                }
                continue;
            }
        }
        // One item is complete: count it off its parents.
        loop {
            match open.last_mut() {
                None => return Ok(items),
                Some(None) => break,
                Some(Some(left)) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    const LIM: Limits = Limits {
        max_items: 1_000,
        max_elements: 100,
        max_depth: 8,
    };

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        crate::universe::to_cbor(v)
    }

    #[test]
    fn counts_the_items_of_values_serde_writes() {
        assert_eq!(scan(&cbor(&5u64), &LIM), Ok(1));
        assert_eq!(scan(&cbor(&u64::MAX), &LIM), Ok(1));
        assert_eq!(scan(&cbor(&-3i64), &LIM), Ok(1));
        assert_eq!(scan(&cbor(&1.5f64), &LIM), Ok(1));
        assert_eq!(scan(&cbor(&"text"), &LIM), Ok(1));
        assert_eq!(scan(&cbor(&vec![1u8, 2, 3]), &LIM), Ok(4));
        assert_eq!(
            scan(&cbor(&serde_bytes::ByteBuf::from(vec![0; 300])), &LIM),
            Ok(1)
        );
        let m: BTreeMap<String, Vec<Option<bool>>> =
            [("a".into(), vec![Some(true), None]), ("b".into(), vec![])].into();
        // map, 2 keys, 2 arrays, 2 elements.
        assert_eq!(scan(&cbor(&m), &LIM), Ok(7));
        assert_eq!(scan(&cbor(&(1u8, "x", vec![(); 0])), &LIM), Ok(4));
        // Trailing bytes are not the item's.
        let mut two = cbor(&7u8);
        two.extend(cbor(&8u8));
        assert_eq!(scan(&two, &LIM), Ok(1));
        // Indefinite array [1, [2]] and string ("ab" in two chunks).
        assert_eq!(scan(&[0x9f, 0x01, 0x81, 0x02, 0xff], &LIM), Ok(4));
        assert_eq!(scan(&[0x7f, 0x61, b'a', 0x61, b'b', 0xff], &LIM), Ok(3));
        // A tag and its item.
        assert_eq!(scan(&[0xc1, 0x1a, 0, 0, 0, 1], &LIM), Ok(2));
    }

    #[test]
    fn refuses_what_exceeds_the_limits_from_the_headers() {
        // An array announcing 2^32 elements, with none of them there.
        assert_eq!(
            scan(&[0x9a, 0xff, 0xff, 0xff, 0xff], &LIM),
            Err(ScanError::TooManyElements {
                len: u32::MAX as u64,
                limit: 100
            })
        );
        // A map counts its keys and values.
        let m: BTreeMap<u8, u8> = (0..60).map(|i| (i, i)).collect();
        assert!(matches!(
            scan(&cbor(&m), &LIM),
            Err(ScanError::TooManyElements { len: 120, .. })
        ));
        // Many small arrays: the total bites.
        let v = vec![vec![0u8; 90]; 20];
        assert_eq!(scan(&cbor(&v), &LIM), Err(ScanError::TooManyItems(1_000)));
        // Nesting.
        let mut deep = vec![0x81u8; 9];
        deep.push(0);
        assert_eq!(scan(&deep, &LIM), Err(ScanError::TooDeep(8)));
        assert_eq!(scan(&[0x9f; 9], &LIM), Err(ScanError::TooDeep(8)));
    }

    #[test]
    fn refuses_malformed_headers_without_panicking() {
        assert_eq!(scan(&[], &LIM), Err(ScanError::Truncated));
        assert_eq!(scan(&[0x18], &LIM), Err(ScanError::Truncated));
        assert_eq!(scan(&[0x45, 1, 2], &LIM), Err(ScanError::Truncated));
        assert_eq!(scan(&[0x83, 1, 2], &LIM), Err(ScanError::Truncated));
        assert_eq!(
            scan(
                &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                &LIM
            ),
            Err(ScanError::Truncated)
        );
        assert!(matches!(scan(&[0x1c], &LIM), Err(ScanError::Invalid(_))));
        assert!(matches!(scan(&[0xff], &LIM), Err(ScanError::Invalid(_))));
        assert!(matches!(scan(&[0x1f], &LIM), Err(ScanError::Invalid(_))));
        assert!(matches!(
            scan(&[0x9f, 0x01], &LIM),
            Err(ScanError::Truncated)
        ));
        // Every byte string of every short length and every first byte.
        for b in 0..=255u8 {
            for tail in [&[][..], &[0][..], &[0xff; 9][..]] {
                let mut v = vec![b];
                v.extend_from_slice(tail);
                let _ = scan(&v, &LIM);
            }
        }
    }
}
