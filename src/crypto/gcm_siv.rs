//! AES-256-GCM-SIV (RFC 8452), built from the `aes` block cipher and the `polyval` universal
//! hash, for the short values of protected columns.
//!
//! Why not the `aes-gcm-siv` crate: its output is the same (the tests compare both byte for
//! byte, both ways), but per value it derives the per-nonce keys with six one-block calls,
//! each through the CPU-feature dispatch and each waiting for the previous one, and it
//! expands a decryption key schedule the mode never uses. Both were ~25% of pgveil's CPU in
//! a bulk COPY (bench/README.md). Here the six derivation blocks, and the keystream blocks,
//! go through AES-NI as one batch (the `aes` crate interleaves up to eight blocks), and only
//! the encryption schedule is expanded. The derivation itself (an AES key schedule per
//! value) is inherent to the mode. `aes` and `polyval` pick AES-NI and CLMUL at run time.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes256Enc, Block};
use polyval::universal_hash::UniversalHash;
use polyval::Polyval;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// The value does not authenticate under this key, nonce and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-GCM-SIV authentication failed")]
pub struct TagMismatch;

/// AES-256-GCM-SIV under one key: its key-generating key's schedule, expanded once.
#[derive(Clone)]
pub struct GcmSiv {
    key_generating_key: Aes256Enc,
}

/// The keys of one nonce (RFC 8452 §4): message authentication (POLYVAL) and encryption.
struct MessageKeys {
    polyval: Polyval,
    encryption: Aes256Enc,
}

impl GcmSiv {
    pub fn new(key: &[u8; KEY_LEN]) -> GcmSiv {
        GcmSiv {
            key_generating_key: Aes256Enc::new(GenericArray::from_slice(key)),
        }
    }

    /// Encrypts `buffer` in place; returns the tag.
    pub fn encrypt_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        associated_data: &[u8],
        buffer: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let keys = self.message_keys(nonce);
        let tag = keys.tag(nonce, associated_data, buffer);
        keys.apply_keystream(&tag, buffer);
        tag
    }

    /// Decrypts `buffer` in place if `tag` authenticates it; on failure `buffer` is zeroed
    /// (no unauthenticated plaintext is left behind).
    pub fn decrypt_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        associated_data: &[u8],
        buffer: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        let keys = self.message_keys(nonce);
        keys.apply_keystream(tag, buffer);
        let expected = keys.tag(nonce, associated_data, buffer);
        if bool::from(expected.ct_eq(tag)) {
            Ok(())
        } else {
            buffer.zeroize();
            Err(TagMismatch)
        }
    }

    /// Counter-mode derivation: block `i` is `i` (u32 LE) then the nonce; the first half of
    /// each encrypted block is key material: 2 blocks for the POLYVAL key, 4 for AES-256.
    fn message_keys(&self, nonce: &[u8; NONCE_LEN]) -> MessageKeys {
        let mut blocks = [Block::default(); 6];
        for (counter, block) in (0u32..).zip(blocks.iter_mut()) {
            block[..4].copy_from_slice(&counter.to_le_bytes());
            block[4..].copy_from_slice(nonce);
        }
        self.key_generating_key.encrypt_blocks(&mut blocks);
        let mut mac_key = Zeroizing::new([0u8; 16]);
        let mut encryption_key = Zeroizing::new([0u8; KEY_LEN]);
        let halves = mac_key
            .chunks_exact_mut(8)
            .chain(encryption_key.chunks_exact_mut(8));
        for (half, block) in halves.zip(&blocks) {
            half.copy_from_slice(&block[..8]);
        }
        for block in &mut blocks {
            block.as_mut_slice().zeroize();
        }
        MessageKeys {
            polyval: Polyval::new(GenericArray::from_slice(&mac_key[..])),
            encryption: Aes256Enc::new(GenericArray::from_slice(&encryption_key[..])),
        }
    }
}

impl MessageKeys {
    /// POLYVAL over the padded associated data, the padded plaintext and their bit lengths,
    /// XORed with the nonce, top bit cleared, encrypted.
    fn tag(&self, nonce: &[u8; NONCE_LEN], associated_data: &[u8], plaintext: &[u8]) -> [u8; 16] {
        let mut polyval = self.polyval.clone();
        polyval.update_padded(associated_data);
        polyval.update_padded(plaintext);
        let mut lengths = Block::default();
        lengths[..8].copy_from_slice(&(associated_data.len() as u64 * 8).to_le_bytes());
        lengths[8..].copy_from_slice(&(plaintext.len() as u64 * 8).to_le_bytes());
        polyval.update(&[lengths]);
        let mut tag = polyval.finalize();
        for (byte, n) in tag.iter_mut().zip(nonce) {
            *byte ^= n;
        }
        tag[15] &= 0x7f;
        self.encryption.encrypt_block(&mut tag);
        tag.into()
    }

    /// AES-CTR with the tag (top bit set) as the initial counter block, whose first four
    /// bytes count up as a u32 LE (wrapping); keystream blocks are made eight at a time.
    fn apply_keystream(&self, tag: &[u8; TAG_LEN], buffer: &mut [u8]) {
        let mut counter_block = Block::clone_from_slice(tag);
        counter_block[15] |= 0x80;
        let mut counter = u32::from_le_bytes([
            counter_block[0],
            counter_block[1],
            counter_block[2],
            counter_block[3],
        ]);
        let mut keystream = [Block::default(); 8];
        for group in buffer.chunks_mut(16 * keystream.len()) {
            let blocks = &mut keystream[..group.len().div_ceil(16)];
            for block in blocks.iter_mut() {
                *block = counter_block;
                block[..4].copy_from_slice(&counter.to_le_bytes());
                counter = counter.wrapping_add(1);
            }
            self.encryption.encrypt_blocks(blocks);
            for (chunk, block) in group.chunks_mut(16).zip(blocks.iter()) {
                for (byte, key) in chunk.iter_mut().zip(block) {
                    *byte ^= key;
                }
            }
        }
        for block in &mut keystream {
            block.as_mut_slice().zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm_siv::aead::AeadInPlace;
    use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};

    /// A deterministic byte stream (xorshift), so failures reproduce.
    fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn matches_the_aes_gcm_siv_crate_both_ways() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for len in (0..=70).chain([127, 128, 129, 255, 256, 1000, 4096]) {
            for ad_len in [0, 1, 16, 17, 45] {
                let key: [u8; 32] = bytes(&mut seed, 32).try_into().unwrap();
                let nonce: [u8; 12] = bytes(&mut seed, 12).try_into().unwrap();
                let ad = bytes(&mut seed, ad_len);
                let plaintext = bytes(&mut seed, len);
                let reference = Aes256GcmSiv::new_from_slice(&key).unwrap();
                let mut theirs = plaintext.clone();
                let their_tag = reference
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), &ad, &mut theirs)
                    .unwrap();
                let ours = GcmSiv::new(&key);
                let mut mine = plaintext.clone();
                let my_tag = ours.encrypt_in_place(&nonce, &ad, &mut mine);
                assert_eq!(mine, theirs, "ciphertext, len {len}, ad {ad_len}");
                assert_eq!(my_tag[..], their_tag[..], "tag, len {len}, ad {ad_len}");
                ours.decrypt_in_place(&nonce, &ad, &mut mine, &my_tag)
                    .unwrap();
                assert_eq!(mine, plaintext);
                // The crate opens what this module seals.
                reference
                    .decrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        &ad,
                        &mut theirs,
                        Tag::from_slice(&my_tag),
                    )
                    .unwrap();
                assert_eq!(theirs, plaintext);
            }
        }
    }

    #[test]
    fn a_changed_byte_anywhere_fails_and_leaves_no_plaintext() {
        let key = [7u8; 32];
        let nonce = [3u8; 12];
        let ours = GcmSiv::new(&key);
        let mut sealed = b"123-45-6789 and more than one block".to_vec();
        let tag = ours.encrypt_in_place(&nonce, b"ad", &mut sealed);
        for at in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert_eq!(
                ours.decrypt_in_place(&nonce, b"ad", &mut tampered, &tag),
                Err(TagMismatch)
            );
            assert!(tampered.iter().all(|&b| b == 0));
        }
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        let mut copy = sealed.clone();
        assert!(ours
            .decrypt_in_place(&nonce, b"ad", &mut copy, &bad_tag)
            .is_err());
        let mut copy = sealed.clone();
        assert!(ours
            .decrypt_in_place(&nonce, b"AD", &mut copy, &tag)
            .is_err());
        let mut copy = sealed.clone();
        assert!(ours
            .decrypt_in_place(&[4u8; 12], b"ad", &mut copy, &tag)
            .is_err());
        assert!(ours
            .decrypt_in_place(&nonce, b"ad", &mut sealed, &tag)
            .is_ok());
    }
}
