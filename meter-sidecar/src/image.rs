//! Image content parts: what an image costs in prompt tokens, from its size alone.
//!
//! In: one chat content part that is an image. Out: its tokens. Nothing here allocates more than a bounded
//! buffer ([`MAX_DECODED_BYTES`]), and nothing panics or overflows on any input, whatever sizes a header claims.
//!
//! **Which parts are images.** OpenAI chat `{"type": "image_url", "image_url": {"url", "detail"}}` (an
//! `image_url` that is a bare string is read as its `url`), the Responses API's
//! `{"type": "input_image", "image_url": "…", "detail"}`, and Anthropic's
//! `{"type": "image", "source": {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}`. An image
//! is never counted as the text of its URL or of its base64 data.
//!
//! **The rule** is OpenAI's tile formula for GPT-4o-class models ([`image_tokens`]):
//! - `detail: "low"` costs [`LOW_DETAIL_TOKENS`] (85) whatever the size;
//! - otherwise (`"high"`, `"auto"`, absent, anything else) the image is scaled down to fit within 2048×2048,
//!   then scaled down so that its shortest side is 768, and costs
//!   `85 + 170 × ceil(w / 512) × ceil(h / 512)`. Images are only ever scaled down, never up, and the scaled
//!   sides are kept as exact fractions, so `ceil` sees the exact value (1024×1024 → 768×768 → 4 tiles → 765;
//!   2048×4096 → 768×1536 → 6 tiles → 1105; 512×512 → 1 tile → 255).
//!
//! **Where the size comes from**, first match wins:
//! 1. the header of a `data:` URL with `;base64` (or of Anthropic's base64 `source.data`): PNG (`IHDR`), GIF
//!    (logical screen), WebP (`VP8 `, `VP8L`, `VP8X`) and JPEG (the first SOFn frame header within the first
//!    [`MAX_DECODED_BYTES`] decoded bytes). The format is recognised by its magic bytes, not by the declared
//!    media type, and only the first [`MAX_DECODED_BYTES`] bytes are ever decoded;
//! 2. a Tollgate extension: positive integer `width` and `height` fields on the part itself, or on its
//!    `image_url` object (or Anthropic's `source`), for callers that know the size of a remote image;
//! 3. otherwise (a remote URL without declared size, an unreadable or truncated header, a zero side) the image
//!    costs the formula's maximum over all sizes, [`UNKNOWN_SIZE_TOKENS`] = 85 + 170 × 8 = **1445**: after
//!    scaling, the shortest side is at most 768 (2 tiles) and the longest at most 2048 (4 tiles), so no image
//!    has more than 8 tiles (768×2048 reaches it). `detail: "low"` still costs 85.
//!
//! Not modelled: models whose images are priced differently (gpt-4o-mini's 2833 + 5667 per tile, o1/o3's
//! 75 + 150, the 32-pixel-patch models gpt-4.1-mini/nano and o4-mini); they are all counted by the rule above.

use serde_json::Value;

/// Tokens of an image with `detail: "low"`, and the base cost of every image.
pub const LOW_DETAIL_TOKENS: usize = 85;

/// Tokens per 512×512 tile at high detail.
pub const TOKENS_PER_TILE: usize = 170;

/// Side of a tile, in pixels.
const TILE_SIDE: u128 = 512;

/// The box a high-detail image is first scaled down to fit in.
const MAX_SIDE: u128 = 2048;

/// The length a high-detail image's shortest side is then scaled down to.
const SHORT_SIDE: u128 = 768;

/// Most tiles any image can have after scaling: 2 along the short side (≤ 768) × 4 along the long one (≤ 2048).
pub const MAX_TILES: usize = 8;

/// Tokens of an image whose size is unknown: the formula's maximum over all sizes, 85 + 170 × 8 = 1445.
pub const UNKNOWN_SIZE_TOKENS: usize = LOW_DETAIL_TOKENS + TOKENS_PER_TILE * MAX_TILES;

/// At most this many bytes of an image's base64 data are decoded to look for its size (64 KiB, enough for
/// any JPEG whose frame header follows ordinary metadata; a frame header after it leaves the size unknown).
pub const MAX_DECODED_BYTES: usize = 64 * 1024;

/// Bytes decoded first: enough for the PNG, GIF and WebP headers (30 bytes at most).
const HEAD_BYTES: usize = 32;

/// Width and height in pixels, both non-zero.
pub type Size = (u32, u32);

/// Whether `part` is an image content part (see the module documentation for the shapes).
pub fn is_image_part(part: &Value) -> bool {
    matches!(
        part.get("type").and_then(Value::as_str),
        Some("image_url" | "input_image" | "image")
    )
}

/// Tokens of an image content part: by its detail and size, the maximum when the size is unknown.
pub fn image_part_tokens(part: &Value) -> usize {
    // Chat: `image_url` is an object (or, leniently, the URL string); Responses: a string beside `detail`.
    let image_url = part.get("image_url");
    let holder = image_url.filter(|value| value.is_object());
    let detail = holder
        .and_then(|holder| holder.get("detail"))
        .or_else(|| part.get("detail"))
        .and_then(Value::as_str);
    if detail == Some("low") {
        return LOW_DETAIL_TOKENS;
    }
    let url = holder
        .and_then(|holder| holder.get("url"))
        .or(image_url)
        .and_then(Value::as_str);
    let source = part.get("source").filter(|value| value.is_object());
    let from_data = url
        .and_then(data_url_size)
        .or_else(|| source.and_then(anthropic_source_size));
    let size = from_data
        .or_else(|| declared_size(part))
        .or_else(|| holder.and_then(declared_size))
        .or_else(|| source.and_then(declared_size));
    image_tokens(size, false)
}

/// Tokens of an image of `size` (`None`: unknown) at low or high detail, by OpenAI's tile formula.
pub fn image_tokens(size: Option<Size>, low_detail: bool) -> usize {
    if low_detail {
        return LOW_DETAIL_TOKENS;
    }
    let tiles = size.map_or(MAX_TILES, |(width, height)| tiles(width, height));
    LOW_DETAIL_TOKENS.saturating_add(TOKENS_PER_TILE.saturating_mul(tiles))
}

/// Number of 512-pixel tiles of a `width` × `height` image after scaling it down to fit 2048×2048 and then
/// its shortest side down to 768. Exact rational arithmetic in `u128`: `u32` sides cannot overflow it.
fn tiles(width: u32, height: u32) -> usize {
    let (w, h) = (u128::from(width.max(1)), u128::from(height.max(1)));
    let (long, short) = (w.max(h), w.min(h));
    // The scale factor as num / den (≤ 1).
    let (num, den) = if long > MAX_SIDE {
        // Fitted into 2048×2048 the short side is short × 2048 / long; if that is still over 768 the second
        // step brings it to exactly 768, which is short × 768 / short overall.
        if short * MAX_SIDE > SHORT_SIDE * long {
            (SHORT_SIDE, short)
        } else {
            (MAX_SIDE, long)
        }
    } else if short > SHORT_SIDE {
        (SHORT_SIDE, short)
    } else {
        (1, 1)
    };
    let along = |side: u128| (side * num).div_ceil(den * TILE_SIDE);
    let tiles = along(w).saturating_mul(along(h));
    usize::try_from(tiles).unwrap_or(MAX_TILES).min(MAX_TILES)
}

/// Positive integer `width` and `height` fields of `object` (the Tollgate extension), clamped to `u32`.
fn declared_size(object: &Value) -> Option<Size> {
    let side = |field| {
        object
            .get(field)
            .and_then(Value::as_u64)
            .filter(|&side| side > 0)
            .map(|side| u32::try_from(side).unwrap_or(u32::MAX))
    };
    Some((side("width")?, side("height")?))
}

/// The size in the header of a `data:…;base64,…` URL's image, if it can be read.
pub fn data_url_size(url: &str) -> Option<Size> {
    let rest = strip_prefix_ignore_case(url.trim_start(), "data:")?;
    let comma = rest.find(',')?;
    let (meta, data) = (&rest[..comma], &rest[comma + 1..]);
    let is_base64 = meta
        .split(';')
        .any(|parameter| parameter.trim().eq_ignore_ascii_case("base64"));
    if !is_base64 {
        return None;
    }
    base64_image_size(data)
}

/// The size of an Anthropic `source` of type `base64`.
fn anthropic_source_size(source: &Value) -> Option<Size> {
    if source.get("type").and_then(Value::as_str) != Some("base64") {
        return None;
    }
    let data = source.get("data").and_then(Value::as_str)?;
    base64_image_size(data)
}

/// The size in the header of base64 image `data`. Only a JPEG needs more than its first few bytes decoded.
fn base64_image_size(data: &str) -> Option<Size> {
    let head = decode_base64_prefix(data, HEAD_BYTES);
    if head.starts_with(&[0xff, 0xd8]) {
        header_size(&decode_base64_prefix(data, MAX_DECODED_BYTES))
    } else {
        header_size(&head)
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// Decodes at most `max` bytes from the start of base64 `data` (standard or URL-safe alphabet; ASCII spaces,
/// tabs and line breaks are skipped). Decoding stops at padding or at the first character outside the alphabet,
/// returning what was decoded so far. Reads at most about `max × 4 / 3` characters of `data` plus whitespace.
pub fn decode_base64_prefix(data: &str, max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(max.min(data.len() / 4 * 3 + 3));
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for byte in data.bytes() {
        if out.len() >= max {
            break;
        }
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => break,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// The size an image header declares: PNG, GIF, WebP or JPEG, recognised by magic bytes. `None` for anything
/// else, for a truncated header, or for a zero side.
pub fn header_size(bytes: &[u8]) -> Option<Size> {
    let size = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_size(bytes)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some((u32::from(le16(bytes, 6)?), u32::from(le16(bytes, 8)?)))
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        webp_size(bytes)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        jpeg_size(bytes)
    } else {
        None
    };
    size.filter(|&(width, height)| width > 0 && height > 0)
}

/// PNG: the `IHDR` chunk comes first, width and height as big-endian `u32` at offsets 16 and 20.
fn png_size(bytes: &[u8]) -> Option<Size> {
    if bytes.get(12..16) != Some(b"IHDR") {
        return None;
    }
    Some((be32(bytes, 16)?, be32(bytes, 20)?))
}

/// WebP: the first chunk after `RIFF….WEBP` is `VP8 ` (lossy), `VP8L` (lossless) or `VP8X` (extended).
fn webp_size(bytes: &[u8]) -> Option<Size> {
    match bytes.get(12..16)? {
        b"VP8 " => {
            // Frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height (2 bits of scale above).
            if bytes.get(23..26) != Some(&[0x9d, 0x01, 0x2a]) {
                return None;
            }
            Some((
                u32::from(le16(bytes, 26)? & 0x3fff),
                u32::from(le16(bytes, 28)? & 0x3fff),
            ))
        }
        b"VP8L" => {
            // Signature 0x2f, then width - 1 and height - 1 in 14 bits each, little-endian.
            if bytes.get(20) != Some(&0x2f) {
                return None;
            }
            let bits = u32::from_le_bytes(bytes.get(21..25)?.try_into().ok()?);
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        b"VP8X" => {
            // Flags and reserved (4 bytes), then canvas width - 1 and height - 1 in 24 bits each.
            Some((le24(bytes, 24)? + 1, le24(bytes, 27)? + 1))
        }
        _ => None,
    }
}

/// JPEG: walks the marker segments from SOI to the first start-of-frame (any SOFn: baseline, extended,
/// progressive, lossless, arithmetic), whose segment holds precision, height and width. Stops at start of scan,
/// end of image, or the end of `bytes`.
fn jpeg_size(bytes: &[u8]) -> Option<Size> {
    let mut at = 2;
    loop {
        if *bytes.get(at)? != 0xff {
            return None;
        }
        // Any number of 0xff fill bytes may precede a marker.
        while *bytes.get(at)? == 0xff {
            at += 1;
        }
        let marker = *bytes.get(at)?;
        at += 1;
        match marker {
            // Markers without a segment: TEM, RSTn, SOI.
            0x01 | 0xd0..=0xd8 => continue,
            // EOI, SOS: no frame header before them means none we can read.
            0xd9 | 0xda => return None,
            _ => {}
        }
        let length = usize::from(be16(bytes, at)?);
        if length < 2 {
            return None;
        }
        let is_frame = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_frame {
            let height = be16(bytes, at + 3)?;
            let width = be16(bytes, at + 5)?;
            return Some((u32::from(width), u32::from(height)));
        }
        at = at.checked_add(length)?;
    }
}

fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le24(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(3)?)?;
    Some(u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Standard base64 with padding, for building data URLs in tests.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn data_url(mime: &str, bytes: &[u8]) -> String {
        format!("data:{mime};base64,{}", base64(bytes))
    }

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        bytes.extend(width.to_be_bytes());
        bytes.extend(height.to_be_bytes());
        bytes.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]); // depth, colour type, …, CRC (not checked)
        bytes
    }

    fn gif(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = b"GIF89a".to_vec();
        bytes.extend(width.to_le_bytes());
        bytes.extend(height.to_le_bytes());
        bytes.extend([0, 0, 0]);
        bytes
    }

    fn riff(chunk: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut bytes = b"RIFF\0\0\0\0WEBP".to_vec();
        bytes.extend(chunk);
        bytes.extend(u32::try_from(payload.len()).unwrap().to_le_bytes());
        bytes.extend(payload);
        bytes
    }

    fn webp_lossy(width: u16, height: u16) -> Vec<u8> {
        let mut payload = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        payload.extend(width.to_le_bytes());
        payload.extend(height.to_le_bytes());
        riff(b"VP8 ", &payload)
    }

    fn webp_lossless(width: u32, height: u32) -> Vec<u8> {
        let bits = (width - 1) | (height - 1) << 14;
        let mut payload = vec![0x2f];
        payload.extend(bits.to_le_bytes());
        riff(b"VP8L", &payload)
    }

    fn webp_extended(width: u32, height: u32) -> Vec<u8> {
        let mut payload = vec![0x10, 0, 0, 0];
        payload.extend(&(width - 1).to_le_bytes()[..3]);
        payload.extend(&(height - 1).to_le_bytes()[..3]);
        riff(b"VP8X", &payload)
    }

    /// SOI, APPn segments of `app_bytes` payload in all, a DQT segment, then the start-of-frame `sof`.
    fn jpeg(sof: u8, width: u16, height: u16, app_bytes: usize) -> Vec<u8> {
        let mut bytes = vec![0xff, 0xd8];
        let mut left = app_bytes;
        while left > 0 {
            let segment = left.min(60_000);
            bytes.extend([0xff, 0xe1]);
            bytes.extend(u16::try_from(segment + 2).unwrap().to_be_bytes());
            bytes.extend(std::iter::repeat_n(0x4a, segment));
            left -= segment;
        }
        bytes.extend([0xff, 0xdb, 0x00, 0x04, 0x00, 0x01]);
        bytes.extend([0xff, 0xff, sof, 0x00, 0x11, 0x08]); // a fill byte before the marker
        bytes.extend(height.to_be_bytes());
        bytes.extend(width.to_be_bytes());
        bytes.extend([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        bytes.extend([0xff, 0xda, 0x00, 0x02]);
        bytes
    }

    #[test]
    fn the_tile_formula_matches_openais_examples() {
        // OpenAI's vision guide: 1024×1024 at high detail costs 765, 2048×4096 costs 1105, low detail 85.
        assert_eq!(image_tokens(Some((1024, 1024)), false), 765);
        assert_eq!(image_tokens(Some((2048, 4096)), false), 1105);
        assert_eq!(image_tokens(Some((4096, 8192)), true), 85);
        assert_eq!(image_tokens(Some((512, 512)), false), 255);
        assert_eq!(image_tokens(Some((513, 100)), false), 85 + 2 * 170);
        assert_eq!(image_tokens(Some((1, 1)), false), 255);
        assert_eq!(image_tokens(Some((768, 2048)), false), 1445);
        assert_eq!(image_tokens(None, false), UNKNOWN_SIZE_TOKENS);
        assert_eq!(image_tokens(None, true), LOW_DETAIL_TOKENS);
    }

    #[test]
    fn the_unknown_size_figure_is_the_formulas_maximum() {
        assert_eq!(UNKNOWN_SIZE_TOKENS, 1445);
        let mut seen = 0;
        let sides = (1..=80u32).map(|i| i * 61).chain([
            767,
            768,
            769,
            1024,
            1536,
            1537,
            2048,
            2049,
            5000,
            65_535,
            u32::MAX,
        ]);
        let sides: Vec<u32> = sides.collect();
        for &w in &sides {
            for &h in &sides {
                seen = seen.max(image_tokens(Some((w, h)), false));
            }
        }
        assert_eq!(seen, UNKNOWN_SIZE_TOKENS);
    }

    #[test]
    fn hostile_sizes_do_not_overflow() {
        for size in [
            (u32::MAX, u32::MAX),
            (u32::MAX, 1),
            (1, u32::MAX),
            (1 << 31, 1 << 31),
        ] {
            let tokens = image_tokens(Some(size), false);
            assert!((255..=UNKNOWN_SIZE_TOKENS).contains(&tokens), "{size:?} {tokens}");
        }
        assert_eq!(header_size(&png(1 << 31, 1 << 31)), Some((1 << 31, 1 << 31)));
        let part =
            json!({"type": "image_url", "image_url": {"url": data_url("image/png", &png(1 << 31, 1 << 31))}});
        assert_eq!(image_part_tokens(&part), 85 + 170 * 4);
    }

    #[test]
    fn png_gif_webp_and_jpeg_headers_give_their_size() {
        assert_eq!(header_size(&png(1024, 768)), Some((1024, 768)));
        assert_eq!(header_size(&gif(640, 480)), Some((640, 480)));
        assert_eq!(header_size(&webp_lossy(800, 600)), Some((800, 600)));
        assert_eq!(header_size(&webp_lossless(300, 16_384)), Some((300, 16_384)));
        assert_eq!(header_size(&webp_extended(5000, 7)), Some((5000, 7)));
        assert_eq!(header_size(&jpeg(0xc0, 1920, 1080, 16)), Some((1920, 1080)));
        assert_eq!(header_size(&jpeg(0xc2, 300, 200, 16)), Some((300, 200)));
    }

    #[test]
    fn truncated_zero_and_unknown_headers_give_no_size() {
        for bytes in [
            png(10, 10),
            gif(10, 10),
            webp_lossy(10, 10),
            webp_lossless(10, 10),
            jpeg(0xc0, 10, 10, 4),
        ] {
            for cut in 0..bytes.len().min(24) {
                // Every prefix that stops inside the dimensions is unreadable, never a wrong size.
                if let Some(size) = header_size(&bytes[..cut]) {
                    assert_eq!(size, (10, 10), "cut at {cut}");
                }
            }
        }
        assert_eq!(header_size(&png(0, 10)), None);
        assert_eq!(header_size(&jpeg(0xc0, 10, 0, 4)), None);
        assert_eq!(header_size(b"BM\x00\x00"), None);
        assert_eq!(header_size(b""), None);
    }

    #[test]
    fn data_urls_of_each_format_are_read() {
        let cases: [(&str, Vec<u8>, Size); 6] = [
            ("image/png", png(1024, 1024), (1024, 1024)),
            ("image/gif", gif(2048, 4096 / 4), (2048, 1024)),
            ("image/webp", webp_lossy(512, 512), (512, 512)),
            ("image/webp", webp_lossless(100, 200), (100, 200)),
            ("image/webp", webp_extended(4000, 3000), (4000, 3000)),
            ("image/jpeg", jpeg(0xc2, 2048, 4096 / 4, 40_000), (2048, 1024)),
        ];
        for (mime, bytes, size) in cases {
            let url = data_url(mime, &bytes);
            assert_eq!(data_url_size(&url), Some(size), "{mime}");
            // Without padding, URL-safe, or with a mislabelled media type, the header is still read.
            assert_eq!(data_url_size(url.trim_end_matches('=')), Some(size), "{mime}");
            let url_safe = url
                .replace('+', "-")
                .replace('/', "_")
                .replacen("image_", "image/", 1);
            assert_eq!(data_url_size(&url_safe), Some(size), "{mime} url-safe");
            assert_eq!(
                data_url_size(&data_url("application/octet-stream", &bytes)),
                Some(size)
            );
        }
        assert_eq!(data_url_size("data:image/png,%89PNG"), None);
        assert_eq!(data_url_size("https://example.com/cat.png"), None);
        assert_eq!(data_url_size("data:image/png;base64"), None);
    }

    #[test]
    fn a_frame_header_beyond_the_decoded_prefix_leaves_the_size_unknown() {
        let bytes = jpeg(0xc0, 16, 16, 70_000);
        assert_eq!(header_size(&bytes), Some((16, 16)));
        assert_eq!(data_url_size(&data_url("image/jpeg", &bytes)), None);
        let part = json!({"type": "image_url", "image_url": {"url": data_url("image/jpeg", &bytes)}});
        assert_eq!(image_part_tokens(&part), UNKNOWN_SIZE_TOKENS);
    }

    #[test]
    fn parts_use_the_header_then_the_declared_size_then_the_maximum() {
        let png_url = data_url("image/png", &png(1024, 1024));
        let chat = json!({"type": "image_url", "image_url": {"url": png_url, "detail": "high", "width": 1, "height": 1}});
        assert_eq!(image_part_tokens(&chat), 765);
        let remote = json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}});
        assert_eq!(image_part_tokens(&remote), UNKNOWN_SIZE_TOKENS);
        let declared_on_url = json!({"type": "image_url", "image_url": {"url": "https://x/a.png", "width": 2048, "height": 4096}});
        assert_eq!(image_part_tokens(&declared_on_url), 1105);
        let declared_on_part = json!({"type": "image_url", "width": 512, "height": 512, "image_url": {"url": "https://x/a.png"}});
        assert_eq!(image_part_tokens(&declared_on_part), 255);
        let low = json!({"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}});
        assert_eq!(image_part_tokens(&low), 85);
        let bare = json!({"type": "image_url", "image_url": png_url});
        assert_eq!(image_part_tokens(&bare), 765);
        let responses = json!({"type": "input_image", "image_url": png_url, "detail": "auto"});
        assert_eq!(image_part_tokens(&responses), 765);
        let anthropic = json!({"type": "image", "source": {"type": "base64", "media_type": "image/gif",
            "data": base64(&gif(512, 512))}});
        assert_eq!(image_part_tokens(&anthropic), 255);
        let anthropic_url = json!({"type": "image", "source": {"type": "url", "url": "https://x/a.png",
            "width": 1024, "height": 1024}});
        assert_eq!(image_part_tokens(&anthropic_url), 765);
        let nonsense = json!({"type": "image_url", "image_url": 7, "width": -1, "height": "x"});
        assert_eq!(image_part_tokens(&nonsense), UNKNOWN_SIZE_TOKENS);
    }

    #[test]
    fn the_base64_decoder_stops_at_its_limit_and_at_foreign_characters() {
        assert_eq!(decode_base64_prefix(&base64(b"hello world"), 64), b"hello world");
        assert_eq!(decode_base64_prefix(&base64(b"hello world"), 5), b"hello");
        assert_eq!(decode_base64_prefix("aGVs\nbG8=", 64), b"hello");
        assert_eq!(decode_base64_prefix("aGVs*bG8=", 64), b"hel");
        assert_eq!(decode_base64_prefix("", 64), b"");
        let long = "A".repeat(1 << 20);
        assert_eq!(
            decode_base64_prefix(&long, MAX_DECODED_BYTES).len(),
            MAX_DECODED_BYTES
        );
    }

    /// Magic prefixes that lead the parser past format detection into each header reader.
    const MAGICS: [&[u8]; 6] = [
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"RIFF\0\0\0\0WEBPVP8L",
        b"RIFF\0\0\0\0WEBPVP8X",
        b"\xff\xd8\xff",
    ];

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_in_a_data_url_never_panic(
            magic in 0..MAGICS.len() + 1,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            detail in proptest::option::of("low|high|auto|x"),
        ) {
            let mut bytes = MAGICS.get(magic).map_or_else(Vec::new, |magic| magic.to_vec());
            bytes.extend(&tail);
            let url = data_url("image/png", &bytes);
            let part = json!({"type": "image_url", "image_url": {"url": url, "detail": detail}});
            let tokens = image_part_tokens(&part);
            proptest::prop_assert!((LOW_DETAIL_TOKENS..=UNKNOWN_SIZE_TOKENS).contains(&tokens));
            let anthropic = json!({"type": "image", "source": {"type": "base64", "data": base64(&bytes)}});
            proptest::prop_assert!(image_part_tokens(&anthropic) <= UNKNOWN_SIZE_TOKENS);
            if let Some((width, height)) = header_size(&bytes) {
                proptest::prop_assert!(width > 0 && height > 0);
            }
        }

        #[test]
        fn arbitrary_text_as_a_data_url_never_panics(text in "\\PC{0,512}") {
            for url in [format!("data:image/jpeg;base64,{text}"), format!("data:{text}"), text.clone()] {
                let part = json!({"type": "image_url", "image_url": {"url": url}});
                let tokens = image_part_tokens(&part);
                proptest::prop_assert!((LOW_DETAIL_TOKENS..=UNKNOWN_SIZE_TOKENS).contains(&tokens));
            }
        }
    }
}
