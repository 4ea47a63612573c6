//! The range splitting and reassembly of delta snapshot chunks.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::raft::transfer::Pack;

/// A pack in memory: its bytes, its layout and each file's content.
struct Fake {
    bytes: Vec<u8>,
    layout: Layout,
    files: HashMap<String, Vec<u8>>,
}

/// A pack of files of `lens` bytes (content derived from `seed`) with a
/// `meta.json` listing them.
fn fake(lens: &[u64], seed: u8) -> Fake {
    let frozen: Vec<FrozenFile> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| FrozenFile {
            name: format!("{:020}.store", i * 1000),
            len,
        })
        .collect();
    let meta = serde_json::to_vec(&serde_json::json!({ "files": frozen })).unwrap();
    let mut bytes = transfer::pack_header();
    bytes.extend(transfer::entry_header(META, meta.len() as u64));
    bytes.extend(&meta);
    let mut files = HashMap::new();
    for (i, f) in frozen.iter().enumerate() {
        bytes.extend(transfer::entry_header(&f.name, f.len));
        let content: Vec<u8> = (0..f.len)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8))
            .collect();
        bytes.extend(&content);
        files.insert(f.name.clone(), content);
    }
    let layout = Layout::parse(&bytes).unwrap().unwrap();
    Fake {
        bytes,
        layout,
        files,
    }
}

/// A receiver whose files are `files` (what it read is counted).
fn reader(
    files: &HashMap<String, Vec<u8>>,
) -> impl FnMut(&str, u64, &mut [u8]) -> io::Result<()> + '_ {
    move |name, offset, buf| {
        let file = files
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let from = offset as usize;
        let src = file
            .get(from..from + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[test]
fn the_layout_of_a_real_pack_points_at_each_files_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let frozen: Vec<FrozenFile> = [(0u64, 3000u64), (40, 17), (41, 5000)]
        .iter()
        .map(|&(base, len)| {
            let name = format!("{base:020}.store");
            let content: Vec<u8> = (0..len + 100)
                .map(|j| (j % 251) as u8 ^ base as u8)
                .collect();
            std::fs::write(dir.path().join(&name), content).unwrap();
            FrozenFile { name, len }
        })
        .collect();
    let meta =
        serde_json::to_vec(&serde_json::json!({ "files": frozen, "other": [1, 2] })).unwrap();
    let pack = Pack::new(meta, dir.path(), &frozen).unwrap();
    let mut bytes = vec![0u8; pack.len() as usize];
    let mut at = 0;
    while at < bytes.len() {
        at += pack.read_at(at as u64, &mut bytes[at..]).unwrap();
    }
    // Not enough bytes yet: no layout, no error.
    for cut in [0, 5, 13, 20, 40] {
        assert_eq!(Layout::parse(&bytes[..cut]).unwrap(), None, "cut at {cut}");
    }
    let layout = Layout::parse(&bytes).unwrap().unwrap();
    assert_eq!(layout.spans().len(), 3);
    for (span, f) in layout.spans().iter().zip(&frozen) {
        assert_eq!(span.name, f.name);
        assert_eq!(span.len, f.len);
        let on_disk = std::fs::read(dir.path().join(&f.name)).unwrap();
        let at = span.start as usize;
        assert_eq!(&bytes[at..at + f.len as usize], &on_disk[..f.len as usize]);
    }
    let last = layout.spans().last().unwrap();
    assert_eq!(
        last.start + last.len,
        pack.len(),
        "nothing after the last file"
    );
    assert!(matches!(
        Layout::parse(b"NOTAPACK\x01\x00\x00\x00\x09\x00"),
        Err(DeltaError::NotAPack(_))
    ));
}

#[test]
fn a_chunk_inside_a_file_the_receiver_holds_travels_as_one_reference() {
    let f = fake(&[100_000, 50_000], 1);
    let have: HashMap<String, u64> = f
        .files
        .iter()
        .map(|(n, c)| (n.clone(), c.len() as u64))
        .collect();
    let start = f.layout.spans()[0].start;
    let chunk = &f.bytes[start as usize + 10..start as usize + 60_010];
    let enc = encode(&f.layout, &have, start + 10, chunk);
    assert_eq!((enc.literal, enc.referenced), (0, 60_000));
    assert_eq!(enc.parts.len(), 1);
    let rebuilt = assemble(&enc.parts, u64::MAX, reader(&f.files)).unwrap();
    assert_eq!(rebuilt, chunk);
    // A chunk crossing into the second file: a reference, the entry
    // header literal, a reference.
    let second = f.layout.spans()[1].start as usize;
    let chunk = &f.bytes[second - 5000..second + 5000];
    let enc = encode(&f.layout, &have, (second - 5000) as u64, chunk);
    assert_eq!(enc.parts.len(), 3);
    assert_eq!(enc.literal, entry_header_len(&f.layout.spans()[1].name));
    assert_eq!(
        assemble(&enc.parts, u64::MAX, reader(&f.files)).unwrap(),
        chunk
    );
}

#[test]
fn a_file_that_differs_or_went_away_is_named_stale() {
    let f = fake(&[10_000, 10_000], 2);
    let have: HashMap<String, u64> = f
        .files
        .iter()
        .map(|(n, c)| (n.clone(), c.len() as u64))
        .collect();
    let enc = encode(&f.layout, &have, 0, &f.bytes);
    assert_eq!(enc.literal + enc.referenced, f.bytes.len() as u64);
    let names: Vec<String> = f.layout.spans().iter().map(|s| s.name.clone()).collect();
    let mut changed = f.files.clone();
    changed.get_mut(&names[1]).unwrap()[5000] ^= 1;
    match assemble(&enc.parts, u64::MAX, reader(&changed)) {
        Err(DeltaError::Stale(name)) => assert_eq!(name, names[1]),
        other => panic!("expected stale, got {other:?}"),
    }
    let mut gone = f.files.clone();
    gone.remove(&names[0]);
    assert!(matches!(
        assemble(&enc.parts, u64::MAX, reader(&gone)),
        Err(DeltaError::Stale(name)) if name == names[0]
    ));
    // Over the size bound, or a name that is a path: refused outright.
    assert!(matches!(
        assemble(&enc.parts, 100, reader(&f.files)),
        Err(DeltaError::Invalid(_))
    ));
    let evil = vec![ChunkPart {
        part: Some(chunk_part::Part::Local(FileRange {
            name: "../../etc/passwd".into(),
            offset: 0,
            len: 10,
            crc32c: 0,
        })),
    }];
    assert!(matches!(
        assemble(&evil, u64::MAX, reader(&f.files)),
        Err(DeltaError::Invalid(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For any layout, any receiver holdings (none, a prefix, all, more
    /// than frozen) and any chunk, the pieces cover the chunk in order,
    /// every reference lies inside what the receiver holds, and the
    /// receiver rebuilds exactly the chunk.
    #[test]
    fn reassembled_chunks_equal_the_original_for_any_layout(
        lens in prop::collection::vec(0u64..5000, 0..6),
        holdings in prop::collection::vec(prop_oneof![Just(None), (0u64..6000).prop_map(Some)], 6),
        seed in any::<u8>(),
        at_frac in 0.0f64..1.0,
        len in 0usize..12_000,
    ) {
        let f = fake(&lens, seed);
        let mut have = HashMap::new();
        let mut receiver = HashMap::new();
        for (i, span) in f.layout.spans().iter().enumerate() {
            if let Some(h) = holdings[i] {
                have.insert(span.name.clone(), h);
                // The receiver's file: the sender's bytes up to what it
                // holds, then other bytes (its own later records).
                let mut content: Vec<u8> = f.files[&span.name].iter().copied().take(h as usize).collect();
                content.resize(h as usize, 0xAB);
                receiver.insert(span.name.clone(), content);
            }
        }
        let at = (f.bytes.len() as f64 * at_frac) as usize;
        let end = (at + len).min(f.bytes.len());
        let chunk = &f.bytes[at..end];
        let pieces = split(&f.layout, &have, at as u64, chunk.len());
        let mut covered = 0usize;
        for p in &pieces {
            match p {
                Piece::Literal(r) => {
                    prop_assert_eq!(r.start, covered);
                    prop_assert!(!r.is_empty());
                    covered = r.end;
                }
                Piece::Local { name, offset, len } => {
                    prop_assert!(*len >= MIN_REFERENCE);
                    let span = f.layout.spans().iter().find(|s| &s.name == name).unwrap();
                    prop_assert!(offset + len <= span.len.min(have[name]));
                    prop_assert_eq!(span.start + offset, (at + covered) as u64);
                    covered += *len as usize;
                }
            }
        }
        prop_assert_eq!(covered, chunk.len());
        let enc = encode(&f.layout, &have, at as u64, chunk);
        prop_assert_eq!(enc.literal + enc.referenced, chunk.len() as u64);
        let rebuilt = assemble(&enc.parts, u64::MAX, reader(&receiver)).unwrap();
        prop_assert_eq!(rebuilt, chunk);
    }
}
