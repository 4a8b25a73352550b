//! How big a layer is once unpacked, read from the compressed stream's own
//! metadata where it carries it: a gzip member's trailing ISIZE, or a zstd
//! frame header's content size. Pure functions over the bytes fetched with
//! small Range requests.

/// The uncompressed size from a gzip member's last four bytes (ISIZE, the
/// size modulo 2³²). Sizes of 4 GiB and more wrap: the smallest candidate
/// that deflate could have produced `compressed` bytes from is taken
/// (deflate expands incompressible input by well under 0.1%).
pub fn gzip_isize(trailer: &[u8], compressed: u64) -> Option<u64> {
    let b: [u8; 4] = trailer
        .get(trailer.len().checked_sub(4)?..)?
        .try_into()
        .ok()?;
    let isize = u32::from_le_bytes(b) as u64;
    const WRAP: u64 = 1 << 32;
    let least_input = compressed.saturating_sub(compressed / 1000 + 1024);
    let k = least_input.saturating_sub(isize).div_ceil(WRAP);
    Some(isize + k * WRAP)
}

/// Bytes of a zstd frame header needed by [`zstd_content_size`].
pub const ZSTD_HEADER_MAX: u64 = 18;

/// The Frame_Content_Size of a zstd frame that starts at `header[0]`, when
/// the encoder wrote one.
pub fn zstd_content_size(header: &[u8]) -> Option<u64> {
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
        let t = 123_456u32.to_le_bytes();
        assert_eq!(gzip_isize(&t, 1000), Some(123_456));
        // A 5 GiB layer compressed to 4.5 GiB: ISIZE wrapped once.
        let size = 5u64 << 30;
        let t = ((size % (1 << 32)) as u32).to_le_bytes();
        assert_eq!(gzip_isize(&t, 9 << 29), Some(size));
        assert_eq!(gzip_isize(&[1, 2], 10), None);
        // Incompressible data: gzip output slightly larger than its input.
        let t = 40_000_000u32.to_le_bytes();
        assert_eq!(gzip_isize(&t, 40_012_345), Some(40_000_000));
    }

    #[test]
    fn zstd_frame_headers() {
        let magic = [0x28, 0xB5, 0x2F, 0xFD];
        // Single segment, 1-byte content size.
        let h = [&magic[..], &[0x20, 200]].concat();
        assert_eq!(zstd_content_size(&h), Some(200));
        // Window descriptor, 2-byte size (+256).
        let h = [&magic[..], &[0x40, 0x58, 0x10, 0x00]].concat();
        assert_eq!(zstd_content_size(&h), Some(0x10 + 256));
        // 4-byte size after a 1-byte dictionary id.
        let h = [&magic[..], &[0x81, 0x58, 7], &100_000u32.to_le_bytes()].concat();
        assert_eq!(zstd_content_size(&h), Some(100_000));
        // 8-byte size, single segment.
        let h = [&magic[..], &[0xE0], &(6u64 << 30).to_le_bytes()].concat();
        assert_eq!(zstd_content_size(&h), Some(6 << 30));
        // No size recorded, or not zstd at all.
        assert_eq!(
            zstd_content_size(&[&magic[..], &[0x00, 0x58]].concat()),
            None
        );
        assert_eq!(zstd_content_size(b"\x1f\x8b\x08\x00"), None);
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
            assert_eq!(gzip_isize(&gz, gz.len() as u64), Some(300_000));
        }
        let z = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(zstd_content_size(&z), Some(300_000));
    }
}
