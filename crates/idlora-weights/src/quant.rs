//! Element types stored in weight files and their conversion to `f32`.
//!
//! The GGML block formats follow llama.cpp's `ggml-common.h`: a block of 32 values holds one or two
//! `f16` scale factors followed by packed integers; a "K-quant" super-block of 256 values holds one
//! or two `f16` super-scales, 16 sub-block scales (and minimums) quantised to 4, 6 or 8 bits, and
//! the packed integers. The decoders below follow `ggml-quants.c`'s `dequantize_row_*` operation
//! for operation, so the results equal llama.cpp's (and the `gguf` Python package's, which the
//! tests compare against).

use half::{bf16, f16};

/// How one tensor's elements are stored.
#[allow(non_camel_case_types)] // GGML's own type names (`Q4_K`), as every GGUF tool prints them
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
    /// GGML `Q5_0`: blocks of 32, `f16` scale, 32 high bits, 16 bytes of nibbles; `x = d * (q - 16)`.
    Q5_0,
    /// GGML `Q5_1`: blocks of 32, `f16` scale and minimum, 32 high bits, 16 bytes of nibbles;
    /// `x = d * q + m`.
    Q5_1,
    /// GGML `Q2_K`: super-blocks of 256; 4-bit sub-block scales and minimums, 2-bit values.
    Q2_K,
    /// GGML `Q3_K`: super-blocks of 256; 6-bit signed sub-block scales, 3-bit values (2 low bits and a
    /// high-bit mask).
    Q3_K,
    /// GGML `Q4_K`: super-blocks of 256; 6-bit sub-block scales and minimums, 4-bit values.
    Q4_K,
    /// GGML `Q5_K`: super-blocks of 256; as `Q4_K` with a fifth bit per value.
    Q5_K,
    /// GGML `Q6_K`: super-blocks of 256; 8-bit signed sub-block scales, 6-bit values.
    Q6_K,
    /// A GGML type this crate knows the size of but does not dequantise (`Q8_1`, `Q8_K`, the
    /// `IQ` and ternary types).
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
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 => 32,
            Self::Q2_K | Self::Q3_K | Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
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
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
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
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::F64
                | Self::Q8_0
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q5_0
                | Self::Q5_1
                | Self::Q2_K
                | Self::Q3_K
                | Self::Q4_K
                | Self::Q5_K
                | Self::Q6_K
        )
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
            Self::Q5_0 => f.write_str("Q5_0"),
            Self::Q5_1 => f.write_str("Q5_1"),
            Self::Q2_K => f.write_str("Q2_K"),
            Self::Q3_K => f.write_str("Q3_K"),
            Self::Q4_K => f.write_str("Q4_K"),
            Self::Q5_K => f.write_str("Q5_K"),
            Self::Q6_K => f.write_str("Q6_K"),
            Self::Ggml { name, .. } => f.write_str(name),
        }
    }
}

/// Values per K-quant super-block.
const QK_K: usize = 256;

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
        StoredType::Q5_0 => bytes.chunks_exact(22).for_each(|b| q5(b, false, out)),
        StoredType::Q5_1 => bytes.chunks_exact(24).for_each(|b| q5(b, true, out)),
        StoredType::Q2_K => bytes.chunks_exact(84).for_each(|b| q2_k(b, out)),
        StoredType::Q3_K => bytes.chunks_exact(110).for_each(|b| q3_k(b, out)),
        StoredType::Q4_K => bytes.chunks_exact(144).for_each(|b| q4_k(b, out)),
        StoredType::Q5_K => bytes.chunks_exact(176).for_each(|b| q5_k(b, out)),
        StoredType::Q6_K => bytes.chunks_exact(210).for_each(|b| q6_k(b, out)),
        _ => return None,
    }
    Some(())
}

/// `Q5_0` (`d`, `qh`, `qs`) or, with `min`, `Q5_1` (`d`, `m`, `qh`, `qs`): element `j < 16` is the
/// low nibble of `qs[j]` plus bit `j` of `qh` as its fifth bit; element `j + 16` the high nibble
/// plus bit `j + 16`.
fn q5(block: &[u8], min: bool, out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let (m, rest) = if min { (f16_at(block, 2), &block[4..]) } else { (0.0, &block[2..]) };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let qs = &rest[4..20];
    let value = |q: u32| if min { q as f32 * d + m } else { (q as i32 - 16) as f32 * d };
    out.extend((0..16).map(|j| value(u32::from(qs[j] & 0x0f) | (((qh >> j) << 4) & 0x10))));
    out.extend((0..16).map(|j| value(u32::from(qs[j] >> 4) | ((qh >> (j + 12)) & 0x10))));
}

/// `Q2_K`: `scales[16]` (low nibble scale, high nibble minimum), `qs[64]`, `d`, `dmin`. Each half
/// of 128 values reads 32 bytes of `qs` four times, two bits at a time; every 16 values take the
/// next scale byte.
fn q2_k(block: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&block[..16], &block[16..80]);
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half in [&q[..16], &q[16..]] {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = dmin * f32::from(sc >> 4);
                out.extend(half.iter().map(|&b| dl * f32::from((b >> shift) & 3) - ml));
            }
        }
    }
}

/// `Q3_K`: `hmask[32]`, `qs[64]`, `scales[12]` (sixteen 6-bit scales, offset by 32), `d`. The low two
/// bits come as in `Q2_K`; a clear bit in `hmask` subtracts 4.
fn q3_k(block: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&block[..32], &block[32..96], &block[96..108]);
    let d = f16_at(block, 108);
    // Scale i: low 4 bits from byte i % 8 (low nibble for i < 8, high nibble after), high 2 bits
    // from byte 8 + i % 4, at bit 2 * (i / 4).
    let scales: [i32; 16] = std::array::from_fn(|i| {
        let low = if i < 8 { packed[i] & 0x0f } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        i32::from(low | (high << 4)) - 32
    });
    let mut is = 0;
    let mut m = 1u8;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for (off, half) in [(0, &q[..16]), (16, &q[16..])] {
                let dl = d * scales[is] as f32;
                is += 1;
                out.extend(half.iter().zip(&hmask[off..off + 16]).map(|(&b, &h)| {
                    let low = i32::from((b >> shift) & 3);
                    dl * (low - if h & m != 0 { 0 } else { 4 }) as f32
                }));
            }
            m <<= 1;
        }
    }
}

/// Sub-block `j`'s 6-bit scale and minimum from the 12 packed bytes of `Q4_K` / `Q5_K`
/// (llama.cpp's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (f32::from(sc), f32::from(m))
}

/// `Q4_K`: `d`, `dmin`, `scales[12]`, `qs[128]`. Each 64 values read 32 bytes: low nibbles with one
/// sub-block's scale and minimum, then high nibbles with the next one's.
fn q4_k(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (scales, qs) = (&block[4..16], &block[16..144]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(q.iter().map(|&b| d1 * f32::from(b & 0x0f) - m1));
        out.extend(q.iter().map(|&b| d2 * f32::from(b >> 4) - m2));
    }
}

/// `Q5_K`: `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`: `Q4_K` with a fifth bit per value, taken
/// from `qh` at bit `2 * pair` (low nibbles) and `2 * pair + 1` (high nibbles).
fn q5_k(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let (scales, qh, qs) = (&block[4..16], &block[16..48], &block[48..176]);
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * pair), 1u8 << (2 * pair + 1));
        out.extend(
            q.iter()
                .zip(qh)
                .map(|(&b, &h)| d1 * f32::from((b & 0x0f) + if h & u1 != 0 { 16 } else { 0 }) - m1),
        );
        out.extend(
            q.iter().zip(qh).map(|(&b, &h)| d2 * f32::from((b >> 4) + if h & u2 != 0 { 16 } else { 0 }) - m2),
        );
    }
}

/// `Q6_K`: `ql[128]` (low 4 bits), `qh[64]` (high 2 bits), `scales[16]` (`i8`), `d`. Each 128 values
/// use 64 bytes of `ql`, 32 of `qh` and 8 scales (one per 16 values).
fn q6_k(block: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    for half in 0..2 {
        let (ql, qh, sc) =
            (&ql[64 * half..64 * (half + 1)], &qh[32 * half..32 * (half + 1)], &scales[8 * half..]);
        let mut y = [0.0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q = |low: u8, shift: u32| i32::from(low | (((qh[l] >> shift) & 3) << 4)) - 32;
            let q1 = q(ql[l] & 0x0f, 0);
            let q2 = q(ql[l + 32] & 0x0f, 2);
            let q3 = q(ql[l] >> 4, 4);
            let q4 = q(ql[l + 32] >> 4, 6);
            let s = |i: usize| f32::from(sc[is + i] as i8);
            y[l] = d * s(0) * q1 as f32;
            y[l + 32] = d * s(2) * q2 as f32;
            y[l + 64] = d * s(4) * q3 as f32;
            y[l + 96] = d * s(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
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
