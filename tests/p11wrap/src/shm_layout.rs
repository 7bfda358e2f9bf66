//! Layout of the shared page of `hsm_test_p11wrap`'s benchmark mode
//! (env `HSM_P11WRAP_SHM=<file>`).
//!
//! This file has no dependencies, so a benchmark can take the constants
//! without linking the wrapper:
//!
//! ```ignore
//! #[path = "../p11wrap/src/shm_layout.rs"]
//! mod shm_layout;
//! ```
//!
//! The file is [`SIZE`] bytes: [`WORDS`] native-endian `u64` words, each
//! accessed as an `AtomicU64` (word `i` at byte offset `8 * i`). The
//! benchmark creates it (mode 0666, so Apache children running as another
//! user can open it too), writes [`MAGIC`] into word [`MAGIC_WORD`], and
//! `mmap`s it `MAP_SHARED` to read the counters.
//!
//! | word | meaning |
//! | --- | --- |
//! | [`MAGIC_WORD`] (0) | [`MAGIC`], written by the benchmark; without it the wrapper ignores the file |
//! | [`LATENCY_US_WORD`] (1) | microseconds of sleep added to every wrapped call (0: none); read on every call |
//! | [`RESERVED_WORD`] (2) | reserved, 0 |
//! | 3..[`COUNTERS_WORD`] | unused, 0 |
//! | [`COUNTERS_WORD`] + i | calls of `FUNCTIONS[i]`, summed over every process using the file |
//!
//! `C_Sign` and `C_Decrypt` calls with a NULL output buffer (size queries)
//! are counted only under `"C_Sign(size query)"` / `"C_Decrypt(size query)"`,
//! so the `C_Sign` / `C_Decrypt` counters count the calls that ask for a
//! result. Calls the fault knob (`HSM_P11WRAP_CONTROL`) makes fail are
//! counted too.

#![allow(dead_code)]

/// The environment variable naming the file.
pub const ENV: &str = "HSM_P11WRAP_SHM";

/// Bytes of the file that are mapped; a shorter file is ignored.
pub const SIZE: usize = 4096;

/// `u64` words in [`SIZE`] bytes.
pub const WORDS: usize = SIZE / 8;

/// Word 0 must hold this ("HSMSSL", layout version 1).
pub const MAGIC: u64 = 0x4853_4d53_534c_0001;

/// Word index of [`MAGIC`].
pub const MAGIC_WORD: usize = 0;

/// Word index of the added latency per wrapped call, in microseconds.
pub const LATENCY_US_WORD: usize = 1;

/// Word index kept for later use.
pub const RESERVED_WORD: usize = 2;

/// Word index of the counter of `FUNCTIONS[0]`.
pub const COUNTERS_WORD: usize = 8;

/// The counted functions; the counter of `FUNCTIONS[i]` is word
/// `COUNTERS_WORD + i`. New names go at the end, so existing indices stay.
pub const FUNCTIONS: &[&str] = &[
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_Login",
    "C_Logout",
    "C_GetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_GenerateKeyPair",
    "C_CreateObject",
    "C_DestroyObject",
    "C_GenerateKey",
    "C_UnwrapKey",
    "C_Sign(size query)",
    "C_Decrypt(size query)",
];

const _: () = assert!(COUNTERS_WORD + FUNCTIONS.len() <= WORDS);

/// The position of `name` in [`FUNCTIONS`], if it is there.
pub const fn index_of(name: &str) -> Option<usize> {
    let name = name.as_bytes();
    let mut i = 0;
    while i < FUNCTIONS.len() {
        if bytes_eq(FUNCTIONS[i].as_bytes(), name) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The word index of `name`'s counter, if it is counted.
pub const fn counter_word(name: &str) -> Option<usize> {
    match index_of(name) {
        Some(i) => Some(COUNTERS_WORD + i),
        None => None,
    }
}

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
