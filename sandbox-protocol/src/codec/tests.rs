use super::*;
use crate::{GuestMsg, HostMsg, Spawn, Stream, MAX_FRAME};

fn spawn_msg() -> HostMsg {
    HostMsg::Spawn {
        id: 7,
        spawn: Spawn {
            program: b"echo".to_vec(),
            args: vec![b"hi".to_vec()],
            env: vec![(b"A".to_vec(), b"b".to_vec())],
            cwd: Some(b"/tmp".to_vec()),
            stdin: true,
            pty: Some(crate::PtySize { rows: 24, cols: 80 }),
            user: Some(b"app:1001".to_vec()),
        },
    }
}

#[test]
fn round_trip_through_the_incremental_decoder_byte_by_byte() {
    let mut wire = encode(&spawn_msg()).unwrap();
    wire.extend(encode(&HostMsg::Shutdown).unwrap());
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    for b in wire {
        dec.push(&[b]);
        while let Some(m) = dec.decode_next::<HostMsg>().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, vec![spawn_msg(), HostMsg::Shutdown]);
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn restored_round_trips_with_and_without_its_options() {
    for msg in [
        HostMsg::Restored {
            entropy: vec![7; 256],
            unix_time_ns: 1_764_000_000_000_000_000,
            ca: Some("TUlJQg==".into()),
            hostname: Some("forked".into()),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        },
        HostMsg::Restored {
            entropy: Vec::new(),
            unix_time_ns: 0,
            ca: None,
            hostname: None,
            machine_id: None,
        },
    ] {
        let wire = encode(&msg).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        assert_eq!(dec.decode_next::<HostMsg>().unwrap(), Some(msg));
    }
}

#[test]
fn oversized_length_is_rejected_before_the_body_arrives() {
    let mut dec = FrameDecoder::new();
    dec.push(&((MAX_FRAME as u32) + 1).to_le_bytes());
    assert!(matches!(
        dec.decode_next::<HostMsg>(),
        Err(ProtocolError::TooLarge(_))
    ));
    assert!(matches!(
        decode_len(u32::MAX.to_le_bytes()),
        Err(ProtocolError::TooLarge(_))
    ));
}

#[test]
fn empty_frame_is_an_error() {
    assert!(matches!(decode_len([0; 4]), Err(ProtocolError::Empty)));
}

#[test]
fn garbage_bodies_are_errors_not_panics() {
    let cases: &[&[u8]] = &[
        &[0xff],
        &[0x00],                         // Spawn with a missing id
        &[0x00, 0x07, 0xff, 0xff, 0xff], // huge varint length for program
        &[0x7f],                         // unknown variant
        &[0x01, 0x01, 0x80],             // truncated varint
    ];
    for body in cases {
        assert!(decode_body::<HostMsg>(body).is_err(), "{body:?}");
        assert!(decode_body::<GuestMsg>(body).is_err(), "{body:?}");
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut wire = encode(&HostMsg::Shutdown).unwrap();
    wire.push(0);
    assert!(matches!(
        decode_body::<HostMsg>(&wire[HEADER_LEN..]),
        Err(ProtocolError::Trailing(1))
    ));
}

#[test]
fn encoding_refuses_messages_over_the_limit() {
    let msg = GuestMsg::Output {
        id: 1,
        stream: Stream::Stdout,
        data: vec![0; MAX_FRAME + 1],
    };
    assert!(matches!(encode(&msg), Err(ProtocolError::TooLarge(_))));
}

#[test]
fn a_length_prefix_larger_than_the_data_waits_for_more() {
    let wire = encode(&spawn_msg()).unwrap();
    let mut dec = FrameDecoder::new();
    dec.push(&wire[..wire.len() - 1]);
    assert!(dec.decode_next::<HostMsg>().unwrap().is_none());
    dec.push(&wire[wire.len() - 1..]);
    assert_eq!(dec.decode_next::<HostMsg>().unwrap(), Some(spawn_msg()));
}
