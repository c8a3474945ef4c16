//! Which pieces of a blob a peer holds.

use std::fmt;

/// A fixed-length set of piece indices. On the wire it is packed most-significant-bit first
/// (piece 0 is the high bit of byte 0), like BitTorrent, with spare trailing bits zero.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    len: u32,
    words: Vec<u64>,
    ones: u32,
}

/// Why bytes from a peer are not a bitfield for this blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("a bitfield of {len} pieces takes {expected} bytes, got {actual}")]
    WrongLength {
        len: u32,
        expected: usize,
        actual: usize,
    },
    #[error("bitfield of {len} pieces has bits set past its end")]
    SpareBitsSet { len: u32 },
}

impl Bitfield {
    /// An empty bitfield (no piece held) for `len` pieces.
    pub fn new(len: u32) -> Self {
        Self {
            len,
            words: vec![0; (len as usize).div_ceil(64)],
            ones: 0,
        }
    }

    /// A bitfield with every piece held.
    pub fn full(len: u32) -> Self {
        let mut field = Self::new(len);
        for word in &mut field.words {
            *word = u64::MAX;
        }
        field.clear_spare_bits();
        field.ones = len;
        field
    }

    /// Parses the packed wire form for a blob of `len` pieces.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitfieldError> {
        let expected = (len as usize).div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                len,
                expected,
                actual: bytes.len(),
            });
        }
        let mut field = Self::new(len);
        for (index, byte) in bytes.iter().enumerate() {
            let word = index / 8;
            let shift = (index % 8) * 8;
            // Reverse bits so bit i of the u64 word is piece i.
            field.words[word] |= u64::from(byte.reverse_bits()) << shift;
        }
        let before = field.words.clone();
        field.clear_spare_bits();
        if field.words != before {
            return Err(BitfieldError::SpareBitsSet { len });
        }
        field.ones = field.words.iter().map(|w| w.count_ones()).sum();
        Ok(field)
    }

    /// The packed wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = (self.len as usize).div_ceil(8);
        (0..len)
            .map(|index| {
                let word = self.words[index / 8];
                ((word >> ((index % 8) * 8)) as u8).reverse_bits()
            })
            .collect()
    }

    /// Number of pieces this bitfield covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is held. Out-of-range indices are never held.
    pub fn get(&self, index: u32) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Marks piece `index` held or not; returns whether it changed. Out-of-range is ignored.
    pub fn set(&mut self, index: u32, held: bool) -> bool {
        if index >= self.len {
            return false;
        }
        let word = &mut self.words[(index / 64) as usize];
        let mask = 1u64 << (index % 64);
        let was = *word & mask != 0;
        if was == held {
            return false;
        }
        if held {
            *word |= mask;
            self.ones += 1;
        } else {
            *word &= !mask;
            self.ones -= 1;
        }
        true
    }

    /// How many pieces are held.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every piece is held (an empty blob is always complete).
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Indices of held pieces, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter_where(false)
    }

    /// Indices of missing pieces, ascending.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter_where(true)
    }

    /// Whether `other` holds any piece this one lacks.
    pub fn has_any_missing_from(&self, other: &Bitfield) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .any(|(mine, theirs)| theirs & !mine != 0)
    }

    /// Indices held here but not in `other`, ascending: the pieces a peer can give us.
    /// Bitfields of different lengths compare over the shorter one.
    pub fn iter_difference<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = u32> + 'a {
        let words = self
            .words
            .iter()
            .zip(&other.words)
            .map(|(mine, theirs)| mine & !theirs);
        set_bits(words, self.len.min(other.len))
    }

    fn iter_where(&self, invert: bool) -> impl Iterator<Item = u32> + '_ {
        set_bits(
            self.words.iter().map(move |w| if invert { !w } else { *w }),
            self.len,
        )
    }

    fn clear_spare_bits(&mut self) {
        let used = self.len % 64;
        if used != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << used) - 1;
        }
    }
}

/// Positions of set bits across `words` (bit i of word w is index 64*w + i), below `len`.
fn set_bits(words: impl Iterator<Item = u64>, len: u32) -> impl Iterator<Item = u32> {
    words.enumerate().flat_map(move |(index, word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            Some(index as u32 * 64 + bit)
        })
        .take_while(move |piece| *piece < len)
    })
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_complete() {
        let mut field = Bitfield::new(70);
        assert_eq!(field.count(), 0);
        assert!(field.set(0, true));
        assert!(!field.set(0, true));
        assert!(field.set(69, true));
        assert!(!field.set(70, true), "out of range is ignored");
        assert!(field.get(69) && field.get(0) && !field.get(1) && !field.get(1000));
        assert_eq!(field.count(), 2);
        assert_eq!(field.iter_ones().collect::<Vec<_>>(), vec![0, 69]);
        assert_eq!(field.iter_zeros().count(), 68);
        assert!(!field.is_complete());
        assert!(Bitfield::full(70).is_complete());
        assert_eq!(Bitfield::full(70).iter_zeros().count(), 0);
        assert!(Bitfield::new(0).is_complete());
    }

    #[test]
    fn wire_form_is_msb_first_and_round_trips() {
        let mut field = Bitfield::new(10);
        field.set(0, true);
        field.set(9, true);
        let bytes = field.to_bytes();
        assert_eq!(bytes, vec![0b1000_0000, 0b0100_0000]);
        assert_eq!(Bitfield::from_bytes(10, &bytes).unwrap(), field);
        let full = Bitfield::full(130);
        assert_eq!(Bitfield::from_bytes(130, &full.to_bytes()).unwrap(), full);
    }

    #[test]
    fn rejects_bad_wire_input() {
        assert_eq!(
            Bitfield::from_bytes(10, &[0]),
            Err(BitfieldError::WrongLength {
                len: 10,
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            Bitfield::from_bytes(10, &[0, 0b0010_0000]),
            Err(BitfieldError::SpareBitsSet { len: 10 })
        );
    }

    #[test]
    fn detects_pieces_worth_asking_for() {
        let mut mine = Bitfield::new(5);
        let mut theirs = Bitfield::new(5);
        assert!(!mine.has_any_missing_from(&theirs));
        theirs.set(3, true);
        assert!(mine.has_any_missing_from(&theirs));
        theirs.set(1, true);
        assert_eq!(
            theirs.iter_difference(&mine).collect::<Vec<_>>(),
            vec![1, 3]
        );
        mine.set(3, true);
        assert_eq!(theirs.iter_difference(&mine).collect::<Vec<_>>(), vec![1]);
        mine.set(1, true);
        assert!(!mine.has_any_missing_from(&theirs));
        assert_eq!(theirs.iter_difference(&mine).count(), 0);
    }
}
