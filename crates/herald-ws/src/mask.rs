//! XOR masking of frame payloads (RFC 6455 §5.3), eight bytes at a time.

/// XORs `payload` with the repeating 4-byte `mask`, starting at mask byte 0.
///
/// Masking is its own inverse, so this both masks (client side) and unmasks (server side).
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    // Eight is a multiple of four, so every 8-byte chunk starts at mask byte 0 and one
    // doubled mask word fits all of them; the byte order only has to match the load/store.
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0_u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The tail also starts at a multiple of eight, hence at mask byte 0.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_bytewise(payload: &mut [u8], mask: [u8; 4]) {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }

    #[test]
    fn matches_the_bytewise_definition_for_every_tail_length() {
        let mask = [0x37, 0xFA, 0x21, 0x3D];
        for len in 0..67 {
            let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut fast = original.clone();
            let mut slow = original.clone();
            apply_mask(&mut fast, mask);
            mask_bytewise(&mut slow, mask);
            assert_eq!(fast, slow, "len {len}");
            apply_mask(&mut fast, mask);
            assert_eq!(fast, original, "masking twice must restore len {len}");
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut payload = *b"Hello";
        apply_mask(&mut payload, [0x37, 0xFA, 0x21, 0x3D]);
        assert_eq!(payload, [0x7F, 0x9F, 0x4D, 0x51, 0x58]);
    }
}
