//! Element types stored in weight files and their conversion to `f32`.
//!
//! The GGML block formats follow llama.cpp's `ggml-common.h`: a block of 32 values holds one or two
//! `f16` scale factors followed by packed integers.

use half::{bf16, f16};

/// How one tensor's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredType {
    /// IEEE `f32`.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE `f64`.
    F64,
    /// Signed integers of the given width in bits (8, 16, 32, 64).
    Int(u8),
    /// Unsigned integers of the given width in bits.
    UInt(u8),
    /// Booleans, one byte each.
    Bool,
    /// GGML `Q8_0`: blocks of 32, one `f16` scale `d`, 32 `i8`; `x = d * q`.
    Q8_0,
    /// GGML `Q4_0`: blocks of 32, one `f16` scale `d`, 16 bytes of nibbles; `x = d * (q - 8)`.
    Q4_0,
    /// GGML `Q4_1`: blocks of 32, `f16` scale `d` and minimum `m`, 16 bytes of nibbles; `x = d * q + m`.
    Q4_1,
    /// A GGML type this crate knows the size of but does not dequantise (`Q5_0`, the K-quants, ...).
    Ggml {
        /// GGML's type id.
        id: u32,
        /// GGML's name for it.
        name: &'static str,
        /// Values per block.
        block: usize,
        /// Bytes per block.
        bytes: usize,
    },
}

impl StoredType {
    /// Values per block (1 for plain types).
    pub fn block_len(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
            Self::Ggml { block, .. } => block,
            _ => 1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
            Self::Int(bits) | Self::UInt(bits) => usize::from(bits / 8),
            Self::Bool => 1,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Ggml { bytes, .. } => bytes,
        }
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// Whether [`to_f32`] converts this type.
    pub fn is_float_convertible(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16 | Self::F64 | Self::Q8_0 | Self::Q4_0 | Self::Q4_1)
    }
}

impl std::fmt::Display for StoredType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::F32 => f.write_str("F32"),
            Self::F16 => f.write_str("F16"),
            Self::BF16 => f.write_str("BF16"),
            Self::F64 => f.write_str("F64"),
            Self::Int(b) => write!(f, "I{b}"),
            Self::UInt(b) => write!(f, "U{b}"),
            Self::Bool => f.write_str("BOOL"),
            Self::Q8_0 => f.write_str("Q8_0"),
            Self::Q4_0 => f.write_str("Q4_0"),
            Self::Q4_1 => f.write_str("Q4_1"),
            Self::Ggml { name, .. } => f.write_str(name),
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Converts `bytes` holding elements of type `ty` to `f32`, appending to `out`.
///
/// Returns `None` when the type is not convertible or `bytes` is not a whole number of blocks; the
/// callers have already checked sizes against the file, so this is a programming error guard, not a
/// user-facing check.
pub fn to_f32(ty: StoredType, bytes: &[u8], out: &mut Vec<f32>) -> Option<()> {
    if !bytes.len().is_multiple_of(ty.block_bytes()) {
        return None;
    }
    match ty {
        StoredType::F32 => {
            out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }
        StoredType::F16 => {
            out.extend(bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        StoredType::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        StoredType::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
        ),
        StoredType::Q8_0 => {
            for block in bytes.chunks_exact(34) {
                let d = f16_at(block, 0);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        StoredType::Q4_0 => {
            for block in bytes.chunks_exact(18) {
                let d = f16_at(block, 0);
                let qs = &block[2..];
                // Low nibbles are elements 0..16, high nibbles 16..32.
                out.extend(qs.iter().map(|&q| d * (f32::from(q & 0x0f) - 8.0)));
                out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
            }
        }
        StoredType::Q4_1 => {
            for block in bytes.chunks_exact(20) {
                let d = f16_at(block, 0);
                let m = f16_at(block, 2);
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut block = Vec::from(h(0.5));
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = Vec::new();
        to_f32(StoredType::Q8_0, &block, &mut out).unwrap();
        let expected: Vec<f32> = (0..32).map(|i| 0.5 * (i as f32 - 16.0)).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn q4_0_block_by_hand() {
        // byte j holds element j in its low nibble and element j + 16 in its high nibble.
        let mut block = Vec::from(h(0.25));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = Vec::new();
        to_f32(StoredType::Q4_0, &block, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 0.25 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 0.25 * ((15 - j) as f32 - 8.0));
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        let mut block = Vec::from(h(2.0));
        block.extend(h(-1.5));
        block.extend((0..16u8).map(|j| j | (3 << 4)));
        let mut out = Vec::new();
        to_f32(StoredType::Q4_1, &block, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * j as f32 - 1.5);
            assert_eq!(out[j + 16], 2.0 * 3.0 - 1.5);
        }
    }

    #[test]
    fn plain_floats() {
        let mut out = Vec::new();
        let bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        to_f32(StoredType::F32, &bytes, &mut out).unwrap();
        let bytes: Vec<u8> =
            [bf16::from_f32(3.0), bf16::from_f32(-0.5)].iter().flat_map(|x| x.to_le_bytes()).collect();
        to_f32(StoredType::BF16, &bytes, &mut out).unwrap();
        let bytes: Vec<u8> = h(0.125).into_iter().chain(h(7.0)).collect();
        to_f32(StoredType::F16, &bytes, &mut out).unwrap();
        assert_eq!(out, [1.5, -2.0, 3.0, -0.5, 0.125, 7.0]);
    }

    #[test]
    fn partial_blocks_are_refused() {
        assert!(to_f32(StoredType::Q4_1, &[0; 19], &mut Vec::new()).is_none());
        assert_eq!(StoredType::Q4_1.bytes_for(33), None);
        assert_eq!(StoredType::Q4_1.bytes_for(64), Some(40));
    }
}
