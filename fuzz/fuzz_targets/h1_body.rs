//! The lean HTTP/1.1 client's body decoder on arbitrary upstream bytes, cut
//! anywhere: it never panics, and whatever it passes on is a prefix of the
//! data the framing holds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len()) / 255;
    let _ = thinkgate::upstream::h1::decode_for_fuzzing(rest, cut);
});
