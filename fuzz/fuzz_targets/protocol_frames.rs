//! Feeds arbitrary bytes to the frame decoder in both directions: it must
//! return messages or errors, never panic or allocate past the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_protocol::{decode_body, FrameDecoder, GuestMsg, HostMsg};

fuzz_target!(|data: &[u8]| {
    let _ = decode_body::<HostMsg>(data);
    let _ = decode_body::<GuestMsg>(data);
    // Split the input at an arbitrary point to exercise partial frames.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut host = FrameDecoder::new();
    let mut guest = FrameDecoder::new();
    for chunk in [&data[..split], &data[split..]] {
        host.push(chunk);
        guest.push(chunk);
        while let Ok(Some(_)) = host.decode_next::<HostMsg>() {}
        while let Ok(Some(_)) = guest.decode_next::<GuestMsg>() {}
    }
});
