//! How big a layer is once unpacked, read from the compressed stream's own
//! metadata where it carries it: a gzip member's trailing ISIZE, or a zstd
//! frame header's content size. Pure functions over the bytes fetched with
//! small Range requests.

/// Least input that deflate could have turned into `compressed` bytes.
/// Stored blocks grow incompressible data by well under 0.1%, but fast
/// encoders (zlib-ng's and zlib-rs's level 1) code it with the fixed
/// Huffman table instead, at up to 9 bits a byte: an eighth more.
fn least_deflate_input(compressed: u64) -> u64 {
    compressed.saturating_sub(compressed / 8 + 1024)
}

/// Least input that zstd could have turned into `compressed` bytes: it
/// stores what it cannot shrink as raw blocks, 3 bytes per 128 KiB.
fn least_zstd_input(compressed: u64) -> u64 {
    compressed.saturating_sub(compressed / 1000 + 1024)
}

/// The uncompressed size from a gzip member's last four bytes (ISIZE, the
/// size modulo 2³²). Sizes of 4 GiB and more wrap, so every
/// `ISIZE + k·2³²` at or above the least input is possible. Of those, the
/// one nearest to `guess` (the configured ratio times the compressed size)
/// is taken, the larger on a tie: taking the smallest would count a 6 GiB
/// layer as 2 GiB and let the disk fill. Near the wrap this errs high,
/// never low, by at most 4 GiB.
pub fn gzip_isize(trailer: &[u8], compressed: u64, guess: u64) -> Option<u64> {
    let b: [u8; 4] = trailer
        .get(trailer.len().checked_sub(4)?..)?
        .try_into()
        .ok()?;
    let isize = u32::from_le_bytes(b) as u64;
    const WRAP: u64 = 1 << 32;
    let k = least_deflate_input(compressed)
        .saturating_sub(isize)
        .div_ceil(WRAP);
    let smallest = isize + k * WRAP;
    if guess <= smallest {
        return Some(smallest);
    }
    // The candidates either side of the guess.
    let below = smallest + (guess - smallest) / WRAP * WRAP;
    let above = below + WRAP;
    Some(if guess - below < above - guess {
        below
    } else {
        above
    })
}

/// Bytes of a zstd frame header needed by [`zstd_content_size`].
pub const ZSTD_HEADER_MAX: u64 = 18;

/// The unpacked size of a zstd layer of `compressed` bytes whose first
/// frame starts at `header[0]`, when the encoder recorded it and that frame
/// can hold the whole layer. A layer may be several frames (zstd:chunked
/// writes many), and the header tells only the first one's size: when that
/// is less than the least input of the whole layer, there are more frames,
/// and the size is unknown.
pub fn zstd_content_size(header: &[u8], compressed: u64) -> Option<u64> {
    let first = zstd_frame_content_size(header)?;
    (first >= least_zstd_input(compressed)).then_some(first)
}

/// The Frame_Content_Size of a zstd frame that starts at `header[0]`, when
/// the encoder wrote one.
fn zstd_frame_content_size(header: &[u8]) -> Option<u64> {
    if header.get(..4)? != [0x28, 0xB5, 0x2F, 0xFD] {
        return None;
    }
    let fhd = *header.get(4)?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let dict_len = [0usize, 1, 2, 4][(fhd & 0x03) as usize];
    let fcs_len = match (fcs_flag, single_segment) {
        (0, false) => return None,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let start = 5 + usize::from(!single_segment) + dict_len;
    let field = header.get(start..start + fcs_len)?;
    let mut v = [0u8; 8];
    v[..fcs_len].copy_from_slice(field);
    let n = u64::from_le_bytes(v);
    Some(if fcs_len == 2 { n + 256 } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_trailer() {
        const GIB: u64 = 1 << 30;
        let wrapped = |size: u64| ((size % (1 << 32)) as u32).to_le_bytes();
        let t = 123_456u32.to_le_bytes();
        assert_eq!(gzip_isize(&t, 1000, 2500), Some(123_456));
        // A 5 GiB layer compressed to 4.5 GiB (weights that hardly
        // compress): 5, 9 and 13 GiB all fit the trailer. A guess from a
        // low ratio finds 5; the default ratio (2.5, 11.25 GiB) errs high.
        assert_eq!(
            gzip_isize(&wrapped(5 * GIB), 9 * GIB / 2, 5 * GIB),
            Some(5 * GIB)
        );
        assert_eq!(
            gzip_isize(&wrapped(5 * GIB), 9 * GIB / 2, 45 * GIB / 4),
            Some(13 * GIB)
        );
        // Never below the compressed size, whatever the guess.
        assert_eq!(
            gzip_isize(&wrapped(5 * GIB), 9 * GIB / 2, GIB),
            Some(5 * GIB)
        );
        // A 6 GiB layer compressed to 2 GiB reads as 2 GiB mod 4 GiB: the
        // guess of 2.5 × 2 GiB picks 6 GiB, not the smallest (2 GiB).
        assert_eq!(
            gzip_isize(&wrapped(6 * GIB), 2 * GIB, 5 * GIB),
            Some(6 * GIB)
        );
        // An ordinary layer keeps its exact size when the guess is near it.
        assert_eq!(
            gzip_isize(&wrapped(300 << 20), 100 << 20, 250 << 20),
            Some(300 << 20)
        );
        assert_eq!(gzip_isize(&[1, 2], 10, 25), None);
        // Incompressible data: gzip output larger than its input, by up
        // to an eighth from a fast encoder's fixed Huffman codes.
        let t = 40_000_000u32.to_le_bytes();
        assert_eq!(gzip_isize(&t, 40_012_345, 100_000_000), Some(40_000_000));
        assert_eq!(gzip_isize(&t, 44_900_000, 112_250_000), Some(40_000_000));
    }

    #[test]
    fn zstd_layers_of_several_frames_are_not_sized_by_the_first() {
        use std::io::Write;
        let frame = |data: &[u8]| zstd::bulk::compress(data, 3).unwrap();
        // xorshift: bytes no compressor can shrink.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let one = frame(&noise);
        assert_eq!(zstd_content_size(&one, one.len() as u64), Some(300_000));
        // Three frames of the same data: the first header says 300,000,
        // which cannot hold 3 × 300,000 bytes of noise.
        let mut three = Vec::new();
        for _ in 0..3 {
            three.write_all(&frame(&noise)).unwrap();
        }
        assert_eq!(zstd_content_size(&three, three.len() as u64), None);
    }

    #[test]
    fn zstd_frame_headers() {
        let magic = [0x28, 0xB5, 0x2F, 0xFD];
        // Single segment, 1-byte content size.
        let h = [&magic[..], &[0x20, 200]].concat();
        assert_eq!(zstd_frame_content_size(&h), Some(200));
        // Window descriptor, 2-byte size (+256).
        let h = [&magic[..], &[0x40, 0x58, 0x10, 0x00]].concat();
        assert_eq!(zstd_frame_content_size(&h), Some(0x10 + 256));
        // 4-byte size after a 1-byte dictionary id.
        let h = [&magic[..], &[0x81, 0x58, 7], &100_000u32.to_le_bytes()].concat();
        assert_eq!(zstd_frame_content_size(&h), Some(100_000));
        // 8-byte size, single segment.
        let h = [&magic[..], &[0xE0], &(6u64 << 30).to_le_bytes()].concat();
        assert_eq!(zstd_frame_content_size(&h), Some(6 << 30));
        // No size recorded, or not zstd at all.
        assert_eq!(
            zstd_frame_content_size(&[&magic[..], &[0x00, 0x58]].concat()),
            None
        );
        assert_eq!(zstd_frame_content_size(b"\x1f\x8b\x08\x00"), None);
    }

    #[test]
    fn real_encoders_agree() {
        use std::io::Write;
        let data = vec![7u8; 300_000];
        let noise: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for input in [&data, &noise] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(input).unwrap();
            let gz = gz.finish().unwrap();
            assert_eq!(gzip_isize(&gz, gz.len() as u64, 750_000), Some(300_000));
        }
        let z = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(zstd_content_size(&z, z.len() as u64), Some(300_000));
    }
}
