//! What peers and trackers send: metainfo and the P2P control frames, as protobuf bytes.
//! Decoding and the checks that turn wire metainfo into ours never panic, and accepted
//! metainfo describes its pieces consistently.
#![no_main]

use kraken_core::MetaInfo;
use kraken_proto::common::v1 as common;
use kraken_proto::p2p::v1 as p2p;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let _ = p2p::Message::decode(data);
    let _ = p2p::PieceHeader::decode(data);
    let _ = p2p::Message::decode_length_delimited(data);
    if let Ok(wire) = common::MetaInfo::decode(data)
        && let Ok(metainfo) = MetaInfo::try_from(&wire)
    {
        let pieces = metainfo.num_pieces();
        // Bounded: a valid metainfo can name many pieces; the first ones and the last must
        // each lie inside the blob.
        for piece in (0..pieces.min(64)).chain(pieces.checked_sub(1)) {
            let len = metainfo
                .piece_len(piece)
                .expect("a piece below num_pieces has a length");
            assert!(len > 0, "an empty piece");
            assert!(metainfo.piece_offset(piece) + len <= metainfo.length());
        }
        assert!(metainfo.piece_len(pieces).is_err(), "no piece past the end");
    }
});
