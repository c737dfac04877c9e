//! The ledger through its public API and real files: appends, proofs, reopen, crash and tamper
//! cases, write failures. Tamper helpers edit the files the way an attacker or a crash would.

use std::path::{Path, PathBuf};

use postern_ledger::{verify_dir, Health, Ledger, LedgerError, LedgerOptions, Link, VerifyError};
use postern_tlog::{
    decode_entry_bundle, leaf_hash, verify_consistency, verify_inclusion, Checkpoint, NoteSigner,
    NoteVerifier, TlogProof,
};

const ORIGIN: &str = "test.postern.example/audit";

fn options() -> LedgerOptions {
    LedgerOptions::new(ORIGIN)
}

fn entry(i: u64) -> Vec<u8> {
    format!("{{\"entry\":{i}}}").into_bytes()
}

async fn open(dir: &Path) -> Ledger {
    Ledger::open(dir, options()).await.unwrap().0
}

async fn append_n(ledger: &Ledger, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(ledger.append(entry(i)).await.unwrap(), i);
    }
}

/// A closed ledger in `dir` of `entries` entries, whose last signed checkpoint covers the first
/// `covered`: that checkpoint.
async fn closed_ledger(dir: &Path, covered: u64, entries: u64) -> Checkpoint {
    let ledger = open(dir).await;
    append_n(&ledger, 0..covered).await;
    let checkpoint = ledger.checkpoint().unwrap().unwrap();
    append_n(&ledger, covered..entries).await;
    ledger.close().await;
    checkpoint
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

/// Splits a segment into its records' payloads (test-side framing reader).
fn records(segment: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(data[pos + 8..pos + 8 + len].to_vec());
        pos += 8 + len;
    }
    out
}

fn write_records(segment: &Path, records: &[Vec<u8>]) {
    let mut data = Vec::new();
    for r in records {
        data.extend_from_slice(&(r.len() as u32).to_be_bytes());
        data.extend_from_slice(&crc32c::crc32c(r).to_be_bytes());
        data.extend_from_slice(r);
    }
    std::fs::write(segment, data).unwrap();
}

fn record_offset(segment: &Path, index: usize) -> u64 {
    records(segment)[..index]
        .iter()
        .map(|r| 8 + r.len() as u64)
        .sum()
}

#[tokio::test]
async fn appends_are_readable_provable_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 0);
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(tmp.path().join("signing-key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let verifier = NoteVerifier::from_verifier_key(&ledger.verifier_key()).unwrap();
    assert_eq!(verifier.name(), ORIGIN);

    append_n(&ledger, 0..300).await;
    let first = ledger.checkpoint().unwrap().expect("tree grew");
    assert_eq!(first.size, 300);
    assert!(
        ledger.checkpoint().unwrap().is_none(),
        "no growth, no checkpoint"
    );
    append_n(&ledger, 300..700).await;
    let second = ledger.checkpoint().unwrap().unwrap();
    let note = ledger.checkpoint_text().unwrap();
    assert_eq!(
        Checkpoint::open(&note, std::slice::from_ref(&verifier), ORIGIN).unwrap(),
        second
    );

    let proof = ledger.consistency_proof(300, 700).unwrap();
    verify_consistency(300, 700, &first.root_hash, &second.root_hash, &proof).unwrap();
    for index in [0, 1, 255, 256, 299, 511, 699] {
        let proof = ledger.inclusion_proof(index, 700).unwrap();
        verify_inclusion(
            index,
            700,
            &leaf_hash(&entry(index)),
            &proof,
            &second.root_hash,
        )
        .unwrap();
        assert_eq!(ledger.entry(index).unwrap(), entry(index));
    }
    let receipt = TlogProof::parse(&ledger.tlog_proof(42).unwrap().encode()).unwrap();
    receipt
        .verify(&entry(42), std::slice::from_ref(&verifier), ORIGIN)
        .unwrap();

    let bundle = ledger.read_entries(1, 256).unwrap();
    let entries = decode_entry_bundle(&bundle).unwrap();
    assert_eq!(entries.len(), 256);
    assert_eq!(entries[0], entry(256).as_slice());
    let partial = ledger.read_entries(2, 700 - 512).unwrap();
    assert_eq!(decode_entry_bundle(&partial).unwrap().len(), 188);
    assert!(ledger.read_entries(2, 256).is_err(), "not full yet");
    let tile = ledger.read_tile(0, 1, 256).unwrap();
    assert_eq!(&tile[..32], &leaf_hash(&entry(256)).0);
    let level1 = ledger.read_tile(1, 0, 2).unwrap();
    assert_eq!(level1.len(), 64);
    assert!(ledger.read_tile(1, 0, 3).is_err());
    ledger.close().await;
    assert!(matches!(
        ledger.append(entry(1)).await,
        Err(LedgerError::Closed)
    ));

    let (reopened, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 700);
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.hashes_rewritten_from, None);
    assert_eq!(report.latest_checkpoint.unwrap(), second);
    assert_eq!(reopened.root(700).unwrap(), second.root_hash);
    assert_eq!(reopened.append(entry(700)).await.unwrap(), 700);
    reopened.close().await;

    let mut calls = 0;
    let verified = verify_dir(tmp.path(), Some(&verifier.verifier_key()), |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .unwrap();
    assert_eq!(verified.entries, 701);
    assert_eq!(
        verified.checkpoints_verified, 3,
        "two in history plus the current file"
    );
    assert!(calls >= 1);
    // The checkpoint files deleted: with the key pinned, the entries are not verified (they
    // could have been rewritten); read from the directory, they pass with no signature.
    for file in ["checkpoint", "checkpoints.log"] {
        std::fs::remove_file(tmp.path().join(file)).unwrap();
    }
    let unsigned = verify_dir(tmp.path(), Some(&verifier.verifier_key()), |_, _| {}).unwrap_err();
    assert!(
        matches!(unsigned, VerifyError::Unsigned { entries: 701 }),
        "{unsigned}"
    );
    assert_eq!(
        verify_dir(tmp.path(), None, |_, _| {})
            .unwrap()
            .checkpoints_verified,
        0
    );
    // Nor does a signed checkpoint of the empty tree alone (an older version signed one at
    // first start): it covers none of the entries.
    let key = std::fs::read_to_string(tmp.path().join("signing-key")).unwrap();
    let signer = NoteSigner::from_signer_key(key.trim()).unwrap();
    let empty = Checkpoint {
        origin: ORIGIN.to_string(),
        size: 0,
        root_hash: postern_tlog::empty_root(),
    };
    std::fs::write(tmp.path().join("checkpoint"), empty.sign(&signer).unwrap()).unwrap();
    let unsigned = verify_dir(tmp.path(), Some(&verifier.verifier_key()), |_, _| {}).unwrap_err();
    assert!(
        matches!(unsigned, VerifyError::Unsigned { entries: 701 }),
        "{unsigned}"
    );
    // A checkpoint file that cannot be read is an error, not skipped.
    std::fs::remove_file(tmp.path().join("checkpoint")).unwrap();
    std::fs::create_dir(tmp.path().join("checkpoint")).unwrap();
    assert!(verify_dir(tmp.path(), Some(&verifier.verifier_key()), |_, _| {}).is_err());
}

/// The empty tree is never signed: a fresh ledger has no checkpoint until it holds an entry.
#[tokio::test]
async fn the_empty_tree_is_not_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    assert_eq!(ledger.checkpoint().unwrap(), None);
    assert!(!tmp.path().join("checkpoint").exists());
    ledger.append(entry(0)).await.unwrap();
    assert_eq!(ledger.checkpoint().unwrap().unwrap().size, 1);
    ledger.close().await;
}

#[tokio::test]
async fn concurrent_appends_get_unique_dense_indices_and_all_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..50u64 {
                let bytes = format!("task {task} entry {i}").into_bytes();
                let index = ledger.append(bytes.clone()).await.unwrap();
                acknowledged.push((index, bytes));
            }
            acknowledged
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let indices: Vec<u64> = all.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..1600).collect::<Vec<_>>());
    ledger.checkpoint().unwrap();
    ledger.close().await;

    let reopened = open(tmp.path()).await;
    for (index, bytes) in &all {
        assert_eq!(&reopened.entry(*index).unwrap(), bytes);
    }
}

#[tokio::test]
async fn torn_tail_is_truncated_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..8).await;
    ledger.checkpoint().unwrap();
    append_n(&ledger, 8..10).await;
    ledger.close().await;
    let segment = only_segment(tmp.path());
    let entry_9 = record_offset(&segment, 9);
    let cut = entry_9 + 5; // inside entry 9's header
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(cut).unwrap();

    // verify reports the torn tail but does not fail on it.
    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!(verified.torn_tail, Some((segment.clone(), entry_9)));

    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(torn.segment, segment);
    assert_eq!(torn.offset, entry_9);
    assert_eq!(torn.discarded_bytes, 5);
    assert_eq!(report.entries, 9);
    assert_eq!(
        ledger.append(entry(99)).await.unwrap(),
        9,
        "appends continue after the cut"
    );
    ledger.close().await;
    verify_dir(tmp.path(), None, |_, _| {}).unwrap();
}

/// A partial note at the end of the checkpoint history (a crash as it was appended) is reported
/// by verify as a torn tail, as a segment's is, not passed over in silence.
#[tokio::test]
async fn a_torn_last_note_of_the_history_is_reported_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..4).await;
    ledger.checkpoint().unwrap();
    ledger.close().await;
    let history = tmp.path().join("checkpoints.log");
    let whole = std::fs::metadata(&history).unwrap().len();
    // The header of a note of 200 bytes, and 10 of its bytes.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&history)
        .unwrap();
    std::io::Write::write_all(&mut file, &[0, 0, 0, 200, 1, 2, 3, 4, b'x', b'y']).unwrap();
    drop(file);
    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!(verified.torn_tail, Some((history, whole)));
}

/// A closed ledger of `n` entries in one segment: its path and bytes.
async fn closed_segment(dir: &Path, n: u64) -> (PathBuf, Vec<u8>) {
    let ledger = open(dir).await;
    append_n(&ledger, 0..n).await;
    ledger.close().await;
    let segment = only_segment(dir);
    let data = std::fs::read(&segment).unwrap();
    (segment, data)
}

#[tokio::test]
async fn zero_filled_tail_is_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data) = closed_segment(tmp.path(), 3).await;
    data.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&segment, data).unwrap();
    let (_, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.torn_tail.unwrap().discarded_bytes, 4096);
    assert_eq!(report.entries, 3);
}

/// Entries of 1..=3000 bytes, so frames straddle 4 KiB block boundaries at every offset.
fn sized_entry(i: u64) -> Vec<u8> {
    let len = 1 + (i * 733 % 3000) as usize;
    let mut entry = format!("{{\"entry\":{i}}}").into_bytes();
    entry.resize(len.max(entry.len()), b'.');
    entry
}

/// Every segment's bytes, in order.
fn segment_bytes(dir: &Path) -> Vec<Vec<u8>> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments.iter().map(|s| std::fs::read(s).unwrap()).collect()
}

#[tokio::test]
async fn direct_and_buffered_writes_leave_the_same_files() {
    // Batches of several sizes, two reopenings (the direct writer picks up the tail of a
    // block it did not write in this run) and segment rolls.
    let mut runs = Vec::new();
    for direct_io in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let options = LedgerOptions {
            direct_io,
            max_segment_bytes: 40_000,
            ..options()
        };
        let mut next = 0u64;
        for batch_sizes in [&[1usize, 7, 2][..], &[13, 1], &[5, 30, 1, 1]] {
            let (ledger, report) = Ledger::open(tmp.path(), options.clone()).await.unwrap();
            assert_eq!((report.entries, report.torn_tail), (next, None));
            for &n in batch_sizes {
                let entries: Vec<_> = (next..next + n as u64).map(sized_entry).collect();
                assert_eq!(ledger.append_many(entries).await.unwrap(), next);
                next += n as u64;
            }
            // Direct writes pad the last segment's block until close; buffered ones never do.
            let open_len = segment_bytes(tmp.path()).last().unwrap().len();
            assert_eq!(
                open_len.is_multiple_of(4096),
                direct_io,
                "{open_len} bytes while open"
            );
            ledger.close().await;
        }
        let segments = segment_bytes(tmp.path());
        assert!(segments.len() >= 3, "expected segment rolls");
        verify_dir(tmp.path(), None, |_, _| {}).unwrap();
        runs.push(segments);
    }
    assert_eq!(runs[0], runs[1]);
}

#[tokio::test]
async fn direct_writes_pad_the_last_block_until_close() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..5).await;
    let segment = only_segment(tmp.path());
    let data = std::fs::read(&segment).unwrap();
    assert_eq!(
        data.len() % 4096,
        0,
        "the segment is not block-padded: does this filesystem ({}) refuse O_DIRECT?",
        tmp.path().display()
    );
    let records_len: usize = (0..5).map(|i| 8 + entry(i).len()).sum();
    assert!(data[records_len..].iter().all(|&b| b == 0));
    // The segment grew by one step of zeros written ahead of its records, and the next batches
    // write over them: the file's length does not move.
    assert_eq!(data.len(), 1 << 20, "the segment grows 1 MiB at a time");
    append_n(&ledger, 5..8).await;
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), 1 << 20);
    // A reader sees the records only, with the padding still on disk.
    assert_eq!(ledger.entry(4).unwrap(), entry(4));
    assert_eq!(ledger.entry(7).unwrap(), entry(7));
    ledger.close().await;
    let records_len: usize = (0..8).map(|i| 8 + entry(i).len()).sum();
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        records_len as u64
    );
}

/// A ledger with direct I/O on or off, holding entries 0..3, and the options it was opened with.
async fn three_entries(direct_io: bool) -> (tempfile::TempDir, Ledger, LedgerOptions) {
    let tmp = tempfile::tempdir().unwrap();
    let options = LedgerOptions {
        direct_io,
        ..options()
    };
    let (ledger, _) = Ledger::open(tmp.path(), options.clone()).await.unwrap();
    append_n(&ledger, 0..3).await;
    (tmp, ledger, options)
}

#[tokio::test]
async fn a_batch_that_fails_after_its_segment_write_is_redone_cleanly() {
    for direct_io in [true, false] {
        let (tmp, ledger, options) = three_entries(direct_io).await;
        // The segment write succeeds (durably, with direct I/O), then the batch fails.
        ledger.inject_failures_after_segment_write(1);
        assert!(ledger.append(b"never acknowledged".to_vec()).await.is_err());
        // Its frame was cut off again: the file holds the three records and nothing after
        // them, in both modes.
        let data = std::fs::read(only_segment(tmp.path())).unwrap();
        let records_len: usize = (0..3).map(|i| 8 + entry(i).len()).sum();
        assert_eq!(
            data.len(),
            records_len,
            "direct_io {direct_io}: the failed batch's bytes are still in the segment"
        );
        // The next batches write over it, at the same offset, and succeed.
        append_n(&ledger, 3..6).await;
        assert_eq!(ledger.health(), Health::Healthy);
        assert_eq!(ledger.entry(3).unwrap(), entry(3));
        ledger.close().await;
        let (ledger, report) = Ledger::open(tmp.path(), options).await.unwrap();
        assert_eq!(
            (report.entries, report.torn_tail),
            (6, None),
            "direct_io {direct_io}"
        );
        ledger.close().await;
        assert_eq!(
            records(&only_segment(tmp.path())),
            (0..6).map(entry).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_failed_batch_that_cannot_be_cut_off_stops_writes_until_it_is() {
    for direct_io in [true, false] {
        let (tmp, ledger, options) = three_entries(direct_io).await;
        // The batch fails after its segment write, and cutting its bytes off fails too (twice).
        ledger.inject_failures_after_segment_write(1);
        ledger.inject_undo_failures(2);
        let failed: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("never acknowledged {i} {}", "x".repeat(200)).into_bytes())
            .collect();
        assert!(ledger.append_many(failed).await.is_err());
        let stale = |data: &[u8]| data.windows(18).any(|w| w == b"never acknowledged");
        let segment = only_segment(tmp.path());
        assert!(
            stale(&std::fs::read(&segment).unwrap()),
            "direct_io {direct_io}"
        );
        // The next batch tries the cut again first; it fails, so nothing is written.
        let err = ledger.append(entry(3)).await.unwrap_err();
        assert!(
            matches!(err, LedgerError::WriteFailed { .. })
                && err.to_string().contains("could not be cut off"),
            "{err}"
        );
        assert_eq!(ledger.size(), 3);
        // Then it succeeds: the batch is written, shorter than the failed one, and none of the
        // failed batch's bytes are left after it to come back as entries after a crash.
        assert_eq!(ledger.append(entry(3)).await.unwrap(), 3);
        assert_eq!(ledger.health(), Health::Healthy);
        assert!(
            !stale(&std::fs::read(&segment).unwrap()),
            "direct_io {direct_io}"
        );
        ledger.close().await;
        let (ledger, report) = Ledger::open(tmp.path(), options).await.unwrap();
        assert_eq!((report.entries, report.torn_tail), (4, None));
        ledger.close().await;
    }
}

#[tokio::test]
async fn a_failed_first_batch_of_a_new_segment_is_cut_off_at_the_latest_on_close() {
    for direct_io in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let options = LedgerOptions {
            max_segment_bytes: 200,
            direct_io,
            ..options()
        };
        let (ledger, _) = Ledger::open(tmp.path(), options.clone()).await.unwrap();
        append_n(&ledger, 0..21).await;
        // The next batch rolls to a new segment and fails there; cutting it off fails once.
        ledger.inject_failures_after_segment_write(1);
        ledger.inject_undo_failures(1);
        assert!(ledger.append(b"never acknowledged".to_vec()).await.is_err());
        ledger.close().await;
        let (ledger, report) = Ledger::open(tmp.path(), options).await.unwrap();
        assert_eq!(report.entries, 21, "direct_io {direct_io}");
        ledger.close().await;
        for segment in std::fs::read_dir(tmp.path().join("log")).unwrap() {
            let data = std::fs::read(segment.unwrap().path()).unwrap();
            assert!(!data.windows(18).any(|w| w == b"never acknowledged"));
        }
    }
}

/// The signing key is created whole (under a temporary name of its own, then linked into
/// place): what a crash part-way could leave is a stray temporary file, which neither stops the
/// next start nor is taken for the key; the start's own write leaves no temporary file.
#[tokio::test]
async fn a_key_left_half_written_by_a_crash_does_not_stop_the_next_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let stray = "signing-key.4242-00000000000000ff.tmp";
    std::fs::write(tmp.path().join(stray), "").unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..2).await;
    ledger.close().await;
    let key = tmp.path().join("signing-key");
    assert!(std::fs::metadata(&key).unwrap().len() > 0);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let temporary: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert_eq!(temporary, [stray], "no temporary file of its own is left");
    let ledger = open(tmp.path()).await;
    ledger.close().await;
}

/// A checkpoint whose append to the history fails part-way (a full disk) leaves nothing behind:
/// the next checkpoint is appended whole after the previous one, the log opens again and
/// verifies, and its latest checkpoint is the newer one.
#[tokio::test]
async fn a_checkpoint_append_that_fails_part_way_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..3).await;
    ledger.checkpoint().unwrap();
    append_n(&ledger, 3..6).await;
    ledger.inject_history_failures(1);
    assert!(ledger.checkpoint().is_err());
    append_n(&ledger, 6..9).await;
    let newer = ledger.checkpoint().unwrap().expect("a new checkpoint");
    assert_eq!(newer.size, 9);
    ledger.close().await;
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 9);
    assert_eq!(ledger.latest_checkpoint().unwrap().size, 9);
    ledger.close().await;
    verify_dir(tmp.path(), None, |_, _| {}).unwrap();
}

/// A padded segment (a crash after direct writes) of 300 records of ~1 KiB: more than one direct
/// write of records (256 KiB at most), so damage can be near the end or far from it.
async fn padded_segment_of_300(dir: &Path) -> (PathBuf, Vec<u8>) {
    let ledger = open(dir).await;
    for i in 0..300 {
        let entry = format!("{{\"entry\":{i},\"pad\":\"{}\"}}", "x".repeat(1000));
        ledger.append(entry.into_bytes()).await.unwrap();
    }
    ledger.close().await;
    let segment = only_segment(dir);
    let mut data = std::fs::read(&segment).unwrap();
    assert!(data.len() > 256 * 1024);
    data.resize(data.len().next_multiple_of(4096), 0);
    (segment, data)
}

#[tokio::test]
async fn a_block_lost_inside_the_last_write_is_a_torn_tail() {
    // Writes of records overwrite zeros written ahead, and a crash can leave any of their blocks
    // unwritten: here a whole block in the middle of the last few records reads as zeros, with
    // records after it. The first record it damages and every one after are discarded.
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data) = padded_segment_of_300(tmp.path()).await;
    let offsets: Vec<u64> = (0..=300).map(|i| record_offset(&segment, i)).collect();
    let lost = (offsets[295] as usize + 100).next_multiple_of(4096);
    data[lost..lost + 4096].fill(0);
    std::fs::write(&segment, &data).unwrap();
    let first_damaged = (0..300).find(|&i| offsets[i + 1] as usize > lost).unwrap();
    assert!(first_damaged < 299, "records follow the lost block");
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, first_damaged as u64);
    assert_eq!(report.torn_tail.unwrap().offset, offsets[first_damaged]);
    ledger.close().await;
}

#[tokio::test]
async fn a_torn_record_in_the_rewritten_block_is_a_torn_tail_but_not_elsewhere() {
    // Sectors of the last block zeroed inside the last record: what a crash during the direct
    // rewrite of that block can leave. The record is discarded, the ones before it kept.
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data) = padded_segment_of_300(tmp.path()).await;
    let last = record_offset(&segment, 299) as usize;
    data[last + 9..last + 12].fill(0);
    std::fs::write(&segment, &data).unwrap();
    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!(verified.torn_tail, Some((segment.clone(), last as u64)));
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 299);
    assert_eq!(report.torn_tail.unwrap().offset, last as u64);
    ledger.close().await;

    // The same damage far from the end (more than one direct write before it), with valid
    // records after it, is corruption.
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data) = padded_segment_of_300(tmp.path()).await;
    let early = record_offset(&segment, 10) as usize;
    data[early + 9..early + 12].fill(0);
    std::fs::write(&segment, &data).unwrap();
    assert!(matches!(
        Ledger::open(tmp.path(), options()).await.unwrap_err(),
        LedgerError::Corrupt {
            entry_index: 10,
            ..
        }
    ));
}

#[tokio::test]
async fn damage_a_signed_checkpoint_covers_is_refused_and_left_in_place() {
    // The damage the test above forgives as a torn write, after a checkpoint covering the
    // damaged record was signed: that record was durable before the checkpoint, so a crash
    // cannot have torn it. Opening refuses without truncating anything.
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data) = padded_segment_of_300(tmp.path()).await;
    let ledger = open(tmp.path()).await;
    assert_eq!(ledger.checkpoint().unwrap().unwrap().size, 300);
    ledger.close().await;
    let last = record_offset(&segment, 299) as usize;
    data[last + 9..last + 12].fill(0);
    std::fs::write(&segment, &data).unwrap();
    let hashes = std::fs::read(tmp.path().join("tree-hashes.bin")).unwrap();
    match Ledger::open(tmp.path(), options()).await.unwrap_err() {
        LedgerError::Corrupt {
            segment: s,
            offset,
            entry_index,
            reason,
        } => {
            assert_eq!(
                (s, offset, entry_index),
                (segment.clone(), last as u64, 299)
            );
            assert!(reason.contains("checkpoint covers 300 entries"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        data,
        "the damaged segment is left as it was"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("tree-hashes.bin")).unwrap(),
        hashes,
        "so are the stored hashes"
    );
    // Verify names the same damage the same way: a bad record at entry 299, not entries missing.
    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    match &err {
        VerifyError::BadRecord {
            segment: s,
            offset,
            entry_index,
            reason,
        } => {
            assert_eq!(
                (s, *offset, *entry_index),
                (&segment, last as u64, 299),
                "{err}"
            );
            assert!(reason.contains("CRC-32C mismatch"), "{err}");
        }
        other => panic!("expected BadRecord, got {other}"),
    }
}

/// A small log as a copy of a running gateway's directory has it: `entries` entries, a signed
/// checkpoint covering the first `covered`, and the active segment still padded with the zeros
/// it grew by (block-aligned, so the whole log lies within the last direct write's reach). Its
/// path, bytes and the byte offset of each entry's record.
async fn small_padded_log(dir: &Path, covered: u64, entries: u64) -> (PathBuf, Vec<u8>, Vec<u64>) {
    closed_ledger(dir, covered, entries).await;
    let segment = only_segment(dir);
    let offsets = (0..entries as usize)
        .map(|i| record_offset(&segment, i))
        .collect();
    let mut data = std::fs::read(&segment).unwrap();
    assert!(data.len() < 4096);
    data.resize(1 << 20, 0);
    std::fs::write(&segment, &data).unwrap();
    (segment, data, offsets)
}

#[tokio::test]
async fn a_flipped_byte_in_a_small_signed_log_is_a_bad_record_not_missing_entries() {
    // The reviewer's case: byte 9 of the segment (in entry 0's payload) flipped, in a log far
    // smaller than one direct write, all of it covered by a signed checkpoint. That record was
    // durable before the checkpoint was signed: no crash tore it.
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data, _) = small_padded_log(tmp.path(), 2, 2).await;
    data[9] ^= 0x01;
    std::fs::write(&segment, &data).unwrap();

    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    let text = err.to_string();
    match &err {
        VerifyError::BadRecord {
            segment: s,
            offset: 0,
            entry_index: 0,
            reason,
        } if s == &segment => assert!(reason.contains("CRC-32C mismatch"), "{text}"),
        other => panic!("expected a bad record at entry 0, got {other}"),
    }
    assert!(text.contains("(entry 0): CRC-32C mismatch"), "{text}");
    assert!(!text.contains("entries are missing"), "{text}");

    // Opening agrees, names the same record and reason, and changes nothing.
    let hashes = std::fs::read(tmp.path().join("tree-hashes.bin")).unwrap();
    match Ledger::open(tmp.path(), options()).await.unwrap_err() {
        LedgerError::Corrupt {
            segment: s,
            offset: 0,
            entry_index: 0,
            reason,
        } if s == segment => assert!(reason.contains("CRC-32C mismatch"), "{reason}"),
        other => panic!("expected a corrupt record at entry 0, got {other}"),
    }
    assert_eq!(std::fs::read(&segment).unwrap(), data);
    assert_eq!(
        std::fs::read(tmp.path().join("tree-hashes.bin")).unwrap(),
        hashes
    );
}

#[tokio::test]
async fn a_torn_final_write_past_the_checkpoint_of_a_small_padded_log_is_still_recovered() {
    // The checkpoint covers entries 0..3; entry 4, the last write, lost a sector to a crash
    // (zeros in its payload). That is a torn tail to verify (a note) and to open (cut off).
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data, offsets) = small_padded_log(tmp.path(), 3, 5).await;
    let entry_4 = offsets[4];
    data[entry_4 as usize + 9..entry_4 as usize + 12].fill(0);
    std::fs::write(&segment, &data).unwrap();

    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!(verified.torn_tail, Some((segment.clone(), entry_4)));
    assert_eq!(verified.entries, 4);

    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 4);
    assert_eq!(report.torn_tail.unwrap().offset, entry_4);
    assert_eq!(ledger.append(entry(4)).await.unwrap(), 4);
    ledger.close().await;
    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!((verified.entries, verified.torn_tail), (5, None));
}

#[tokio::test]
async fn a_tear_in_the_first_entry_after_the_checkpoint_is_forgiven() {
    // The boundary of the rule above: the checkpoint covers entries 0..9, the tear is in 9.
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..9).await;
    assert_eq!(ledger.checkpoint().unwrap().unwrap().size, 9);
    append_n(&ledger, 9..10).await;
    ledger.close().await;
    let segment = only_segment(tmp.path());
    let entry_9 = record_offset(&segment, 9);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(entry_9 + 5).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 9);
    assert_eq!(report.torn_tail.unwrap().offset, entry_9);
    ledger.close().await;
}

#[tokio::test]
async fn entries_lost_before_the_checkpoint_leave_the_stored_hashes_whole() {
    let tmp = tempfile::tempdir().unwrap();
    closed_ledger(tmp.path(), 50, 50).await;
    let segment = only_segment(tmp.path());
    write_records(&segment, &records(&segment)[..30]);
    let hashes = std::fs::read(tmp.path().join("tree-hashes.bin")).unwrap();
    let err = Ledger::open(tmp.path(), options()).await.unwrap_err();
    assert!(err.to_string().contains("entries were lost"), "{err}");
    // The hashes of the lost entries are what is left of them: not cut to the log's size.
    assert_eq!(
        std::fs::read(tmp.path().join("tree-hashes.bin")).unwrap(),
        hashes
    );
}

#[tokio::test]
async fn padding_in_an_earlier_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LedgerOptions {
        max_segment_bytes: 200,
        ..options()
    };
    let (ledger, _) = Ledger::open(tmp.path(), options.clone()).await.unwrap();
    append_n(&ledger, 0..40).await;
    ledger.close().await;
    let mut segments: Vec<_> = std::fs::read_dir(tmp.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(segments.len() > 2);
    // Only the last segment is ever padded: rolling trims (and syncs) the one before.
    for segment in &segments[..segments.len() - 1] {
        assert_ne!(std::fs::metadata(segment).unwrap().len() % 4096, 0);
    }
    let first = &segments[0];
    let mut data = std::fs::read(first).unwrap();
    data.resize(4096, 0);
    std::fs::write(first, data).unwrap();
    assert!(matches!(
        Ledger::open(tmp.path(), options).await.unwrap_err(),
        LedgerError::Corrupt { .. }
    ));
}

#[tokio::test]
async fn padding_left_by_a_crash_is_not_a_torn_tail() {
    // What a process killed after a direct write leaves: zeros to the block boundary, and zeros
    // to the end of the step the segment last grew by.
    for padded_to in [4096, 1 << 20] {
        padding_left_by_a_crash(padded_to).await;
    }
}

async fn padding_left_by_a_crash(padded_to: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let (segment, mut data) = closed_segment(tmp.path(), 3).await;
    let records_len = data.len();
    data.resize(records_len.next_multiple_of(padded_to), 0);
    std::fs::write(&segment, data).unwrap();
    assert_eq!(
        verify_dir(tmp.path(), None, |_, _| {}).unwrap().torn_tail,
        None
    );

    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!((report.entries, report.torn_tail), (3, None));
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        records_len as u64
    );
    append_n(&ledger, 3..6).await;
    ledger.close().await;
    assert_eq!(records(&segment), (0..6).map(entry).collect::<Vec<_>>());
}

async fn ledger_with_20_entries(dir: &Path) -> PathBuf {
    let ledger = open(dir).await;
    append_n(&ledger, 0..20).await;
    ledger.checkpoint().unwrap();
    ledger.close().await;
    only_segment(dir)
}

#[tokio::test]
async fn flipped_byte_mid_log_refuses_open_and_verify_names_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let segment = ledger_with_20_entries(tmp.path()).await;
    let offset = record_offset(&segment, 5);
    let mut data = std::fs::read(&segment).unwrap();
    data[offset as usize + 10] ^= 0x01;
    std::fs::write(&segment, data).unwrap();

    let err = Ledger::open(tmp.path(), options()).await.unwrap_err();
    match &err {
        LedgerError::Corrupt {
            segment: s,
            offset: o,
            entry_index,
            ..
        } => {
            assert_eq!((s, *o, *entry_index), (&segment, offset, 5));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(
        err.to_string().contains(&format!("byte offset {offset}")),
        "{err}"
    );

    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, VerifyError::BadRecord { offset: o, entry_index: 5, .. } if o == offset),
        "{err}"
    );
}

#[tokio::test]
async fn dropped_entry_is_named_by_verify_and_refused_by_open() {
    let tmp = tempfile::tempdir().unwrap();
    let segment = ledger_with_20_entries(tmp.path()).await;
    let mut recs = records(&segment);
    recs.remove(7);
    write_records(&segment, &recs);

    // Opening first: it refuses, and leaves the stored hashes for verify to name the entry.
    let err = Ledger::open(tmp.path(), options()).await.unwrap_err();
    assert!(matches!(err, LedgerError::Inconsistent(_)), "{err}");
    assert!(err.to_string().contains("entry 7 ("), "{err}");
    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, VerifyError::EntryMismatch { entry_index: 7, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("entry 7"), "{err}");

    // Without the stored hashes, the checkpoints still catch it.
    std::fs::remove_file(tmp.path().join("tree-hashes.bin")).unwrap();
    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::CheckpointBeyondLog {
                size: 20,
                entries: 19,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn reordered_entries_are_named_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let segment = ledger_with_20_entries(tmp.path()).await;
    let mut recs = records(&segment);
    recs.swap(3, 4);
    write_records(&segment, &recs);
    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, VerifyError::EntryMismatch { entry_index: 3, .. }),
        "{err}"
    );
    std::fs::remove_file(tmp.path().join("tree-hashes.bin")).unwrap();
    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, VerifyError::CheckpointRootMismatch { size: 20, .. }),
        "{err}"
    );
    assert!(Ledger::open(tmp.path(), options()).await.is_err());
}

#[tokio::test]
async fn checkpoint_signed_by_another_key_fails_verification() {
    let tmp = tempfile::tempdir().unwrap();
    ledger_with_20_entries(tmp.path()).await;
    let real_key = verify_dir(tmp.path(), None, |_, _| {})
        .unwrap()
        .verifier_key;
    let forged_signer = NoteSigner::from_seed(ORIGIN, [9; 32]).unwrap();
    let note = std::fs::read_to_string(tmp.path().join("checkpoint")).unwrap();
    let text = note.split("\n\n").next().unwrap().to_string() + "\n";
    std::fs::write(
        tmp.path().join("checkpoint"),
        forged_signer.sign(&text).unwrap(),
    )
    .unwrap();

    let err = verify_dir(tmp.path(), Some(&real_key), |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CheckpointSignature { which, .. } if which.ends_with("checkpoint")),
        "{err}"
    );
    assert!(Ledger::open(tmp.path(), options()).await.is_err());
    // A verifier key that is not the log's also fails, naming the history's first checkpoint.
    let err = verify_dir(
        tmp.path(),
        Some(&forged_signer.verifier().verifier_key()),
        |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("checkpoint #0"), "{err}");
    // A checkpoint file changed into bytes that are not text is tampering too, not "could
    // not check".
    let mut bytes = note.into_bytes();
    bytes[3] = 0xff;
    std::fs::write(tmp.path().join("checkpoint"), bytes).unwrap();
    let err = verify_dir(tmp.path(), Some(&real_key), |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CheckpointSignature { reason, .. } if reason.contains("not UTF-8")),
        "{err}"
    );
}

#[tokio::test]
async fn write_failures_fail_promptly_then_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..3).await;
    ledger.inject_write_failures(2);
    for _ in 0..2 {
        let err = ledger.append(entry(1000)).await.unwrap_err();
        assert!(matches!(err, LedgerError::WriteFailed { .. }), "{err}");
        assert!(matches!(ledger.health(), Health::Unhealthy { .. }));
    }
    assert_eq!(ledger.size(), 3);
    assert_eq!(
        ledger.append(entry(3)).await.unwrap(),
        3,
        "recovers, indices stay dense"
    );
    assert_eq!(ledger.health(), Health::Healthy);
    ledger.checkpoint().unwrap();
    ledger.close().await;
    assert_eq!(verify_dir(tmp.path(), None, |_, _| {}).unwrap().entries, 4);
}

/// How many files under `dir` this process holds open (each by one descriptor or more).
fn open_files_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[tokio::test]
async fn segments_roll_and_entry_bundles_span_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut small = options();
    small.max_segment_bytes = 2000;
    small.max_batch_entries = 7;
    let (ledger, _) = Ledger::open(tmp.path(), small.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..600u64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            ledger.append(entry(i)).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ledger.checkpoint().unwrap();
    let bundle = ledger.read_entries(0, 256).unwrap();
    assert_eq!(decode_entry_bundle(&bundle).unwrap().len(), 256);
    // Only the last segment is held open (by the state and the writer), however many rolled.
    // (A read opens the segments it reads, and closes them after.)
    let log = tmp.path().join("log");
    assert_eq!(open_files_under(&log), 1);
    ledger.close().await;
    let segments = std::fs::read_dir(&log).unwrap().count();
    assert!(segments > 3, "{segments} segments");
    let (reopened, report) = Ledger::open(tmp.path(), small).await.unwrap();
    assert_eq!(report.entries, 600);
    assert_eq!(open_files_under(&log), 1);
    assert_eq!(
        decode_entry_bundle(&reopened.read_entries(1, 256).unwrap())
            .unwrap()
            .len(),
        256
    );
    assert_eq!(open_files_under(&log), 1);
    verify_dir(tmp.path(), None, |_, _| {}).unwrap();
}

#[tokio::test]
async fn stale_hash_file_is_rebuilt_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = closed_ledger(tmp.path(), 50, 50).await;
    std::fs::remove_file(tmp.path().join("tree-hashes.bin")).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.hashes_rewritten_from, Some(0));
    assert_eq!(ledger.root(50).unwrap(), checkpoint.root_hash);
}

/// Flips one bit of the stored hash at `index` in `dir`'s hash file; returns the file as now
/// written.
fn flip_stored_hash(dir: &std::path::Path, index: usize) -> Vec<u8> {
    let hashes = dir.join("tree-hashes.bin");
    let mut stored = std::fs::read(&hashes).unwrap();
    stored[32 * index + 5] ^= 0x01;
    std::fs::write(&hashes, &stored).unwrap();
    stored
}

/// Opening `dir` is refused as inconsistent, and the hash file is left as `stored`.
async fn open_refused_untouched(dir: &std::path::Path, stored: &[u8]) -> LedgerError {
    let err = Ledger::open(dir, options()).await.unwrap_err();
    assert!(matches!(err, LedgerError::Inconsistent(_)), "{err}");
    assert_eq!(std::fs::read(dir.join("tree-hashes.bin")).unwrap(), stored);
    err
}

#[tokio::test]
async fn a_damaged_hash_file_is_refused_where_a_checkpoint_covers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = closed_ledger(tmp.path(), 50, 50).await;
    let hashes = tmp.path().join("tree-hashes.bin");
    let stored = flip_stored_hash(tmp.path(), 40);
    // The entries are intact, but opening cannot tell that from an entry changed before the
    // hash: it refuses, changing nothing, and says how to tell the two apart.
    let err = open_refused_untouched(tmp.path(), &stored).await;
    assert!(err.to_string().contains("moved aside"), "{err}");
    // Moved aside: the entries match the signed checkpoint, and the file is rebuilt.
    std::fs::rename(&hashes, tmp.path().join("tree-hashes.bin.damaged")).unwrap();
    assert_eq!(verify_dir(tmp.path(), None, |_, _| {}).unwrap().entries, 50);
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.hashes_rewritten_from, Some(0));
    assert_eq!(ledger.root(50).unwrap(), checkpoint.root_hash);
    ledger.close().await;
}

#[tokio::test]
async fn a_stored_hash_past_the_checkpoint_that_differs_is_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    closed_ledger(tmp.path(), 20, 50).await;
    let hashes = tmp.path().join("tree-hashes.bin");
    let mut stored = std::fs::read(&hashes).unwrap();
    let covered = postern_tlog::stored_hash_count(20) as usize;
    stored[32 * (covered + 5) + 1] ^= 0x01;
    std::fs::write(&hashes, &stored).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.hashes_rewritten_from, Some(covered as u64 + 5));
    ledger.close().await;
    // A zeroed hash inside the covered range is a hole (a rebuild cut short), not evidence.
    let mut stored = std::fs::read(&hashes).unwrap();
    stored[32 * 3..32 * 4].fill(0);
    std::fs::write(&hashes, &stored).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.hashes_rewritten_from, Some(3));
    ledger.close().await;
}

/// A rewrite of the stored hashes that a crash cut short left its marker (written and synced
/// before the first byte changed): from the position it names, whatever the file holds, even
/// where a signed checkpoint covers it and not zeros (a torn write, a stale block), is
/// rewritten rather than taken as evidence; before that position a difference is still refused.
#[tokio::test]
async fn a_hash_rewrite_cut_short_is_finished_on_open_from_where_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = closed_ledger(tmp.path(), 50, 50).await;
    let marker = tmp.path().join("tree-hashes.rebuild");
    let stored = flip_stored_hash(tmp.path(), 40);

    std::fs::write(&marker, "41\n").unwrap();
    open_refused_untouched(tmp.path(), &stored).await;
    assert!(marker.exists());
    // `audit verify` reads the marker the same way.
    assert!(verify_dir(tmp.path(), None, |_, _| {}).is_err());

    std::fs::write(&marker, "40\n").unwrap();
    assert_eq!(verify_dir(tmp.path(), None, |_, _| {}).unwrap().entries, 50);
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.hashes_rewritten_from, Some(40));
    assert_eq!(ledger.root(50).unwrap(), checkpoint.root_hash);
    ledger.close().await;
    assert!(!marker.exists(), "the marker outlived the rewrite");
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.hashes_rewritten_from, None);
    ledger.close().await;

    // A marker cut short itself (no position) means no rewrite began: the file is evidence.
    let stored = flip_stored_hash(tmp.path(), 45);
    std::fs::write(&marker, "").unwrap();
    open_refused_untouched(tmp.path(), &stored).await;
}

#[tokio::test]
async fn a_second_writer_is_refused_until_the_first_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..3).await;
    let err = Ledger::open(tmp.path(), options()).await.unwrap_err();
    assert!(matches!(err, LedgerError::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("in use by another postern process"),
        "{err}"
    );
    // Reading offline needs no lock.
    assert_eq!(verify_dir(tmp.path(), None, |_, _| {}).unwrap().entries, 3);
    assert_eq!(
        postern_ledger::stored_origin(tmp.path())
            .unwrap()
            .as_deref(),
        Some(ledger.origin())
    );
    ledger.close().await;
    let (reopened, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.entries, 3);
    reopened.close().await;
}

#[tokio::test]
async fn append_many_writes_one_contiguous_run_among_concurrent_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..3).await;
    // Runs from several tasks interleave with single appends; each run stays contiguous.
    let mut tasks = Vec::new();
    for run in 0..8u64 {
        let many = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let entries: Vec<Vec<u8>> = (0..5).map(|i| entry(1000 + run * 10 + i)).collect();
            let first = many.append_many(entries.clone()).await.unwrap();
            (first, entries)
        }));
        let single = ledger.clone();
        tokio::spawn(async move { single.append(entry(5000 + run)).await.unwrap() });
    }
    for task in tasks {
        let (first, entries) = task.await.unwrap();
        for (i, expected) in entries.iter().enumerate() {
            assert_eq!(&ledger.entry(first + i as u64).unwrap(), expected);
        }
    }
    assert_eq!(
        ledger.append_many(Vec::new()).await.unwrap(),
        ledger.size(),
        "an empty run writes nothing"
    );
    assert!(matches!(
        ledger.append_many(vec![entry(1), Vec::new()]).await,
        Err(LedgerError::EntrySize(0))
    ));
    ledger.close().await;
}

/// A ledger in `dir` that holds detached entries for 3 s after a commit (until an append
/// waits or a flush comes), with entry 0 written so that the hold applies from the start.
async fn holding_detached(dir: &Path, mut options: LedgerOptions) -> Ledger {
    options.detached_commit_interval_us = 3_000_000;
    let ledger = Ledger::open(dir, options).await.unwrap().0;
    append_n(&ledger, 0..1).await;
    ledger
}

#[tokio::test]
async fn detached_entries_gather_for_one_sync_until_an_append_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = holding_detached(tmp.path(), options()).await;
    for i in 1..=4 {
        ledger.append_detached(entry(i)).unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(ledger.size(), 1, "detached entries are held for company");
    // A waiting append ends the hold at once and is written after them.
    let started = std::time::Instant::now();
    assert_eq!(ledger.append(entry(5)).await.unwrap(), 5);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "a waiting append is not held for the detached interval ({:?})",
        started.elapsed()
    );
    assert_eq!(ledger.size(), 6);
    // Left alone, detached entries are written once the interval has passed.
    ledger.append_detached(entry(6)).unwrap();
    let mut waited = 0;
    while ledger.size() < 7 && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(
        ledger.size(),
        7,
        "a held detached entry is committed by itself"
    );
    // A flush ends the hold too, and answers with the size that covers the held entries.
    ledger.append_detached(entry(7)).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(ledger.flush().await.unwrap(), 8);
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    assert_eq!(ledger.size(), 8);
    assert_eq!(
        ledger.flush().await.unwrap(),
        8,
        "nothing queued: the size now"
    );
    // Closing writes whatever is still held.
    ledger.append_detached(entry(8)).unwrap();
    ledger.close().await;
    let reopened = open(tmp.path()).await;
    assert_eq!(reopened.size(), 9);
    for i in 0..9 {
        assert_eq!(reopened.entry(i).unwrap(), entry(i));
    }
}

#[tokio::test]
async fn a_provisional_entry_is_left_out_of_the_batch_that_holds_what_supersedes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = holding_detached(tmp.path(), options()).await;
    // Held together (detached), then written by one flush: the superseded entry is left out,
    // and the entries around it keep dense indices.
    ledger
        .append_detached_linked(b"intent A".to_vec(), Link::Provisional(7))
        .unwrap();
    ledger
        .append_detached_linked(b"intent B".to_vec(), Link::Provisional(8))
        .unwrap();
    ledger.append_detached(entry(1)).unwrap();
    ledger
        .append_detached_linked(b"outcome A".to_vec(), Link::Supersedes(7))
        .unwrap();
    ledger
        .append_detached_linked(b"outcome C".to_vec(), Link::Supersedes(9))
        .unwrap();
    assert_eq!(ledger.flush().await.unwrap(), 5);
    let written: Vec<Vec<u8>> = (1..5).map(|i| ledger.entry(i).unwrap()).collect();
    assert_eq!(
        written,
        [
            b"intent B".to_vec(),
            entry(1),
            b"outcome A".to_vec(),
            b"outcome C".to_vec()
        ]
    );
    // A provisional entry written in an earlier batch stays: what supersedes it later is
    // written after it.
    ledger
        .append_detached_linked(b"outcome B".to_vec(), Link::Supersedes(8))
        .unwrap();
    assert_eq!(ledger.flush().await.unwrap(), 6);
    assert_eq!(ledger.entry(5).unwrap(), b"outcome B");
    // A waited append in the same batch is answered with its index among the written ones.
    ledger
        .append_detached_linked(b"intent D".to_vec(), Link::Provisional(10))
        .unwrap();
    ledger
        .append_detached_linked(b"outcome D".to_vec(), Link::Supersedes(10))
        .unwrap();
    assert_eq!(ledger.append(entry(2)).await.unwrap(), 7);
    assert_eq!(ledger.entry(6).unwrap(), b"outcome D");
    ledger.close().await;
    let reopened = open(tmp.path()).await;
    assert_eq!(reopened.size(), 8);
    assert_eq!(reopened.entry(7).unwrap(), entry(2));
}

#[tokio::test]
async fn a_provisional_entry_in_a_full_batch_stays_when_what_supersedes_it_comes_in_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = options();
    options.max_batch_entries = 2;
    let ledger = holding_detached(tmp.path(), options).await;
    // The batch is full after two entries (written at once); the superseding entry is third.
    ledger
        .append_detached_linked(b"intent A".to_vec(), Link::Provisional(7))
        .unwrap();
    ledger.append_detached(entry(1)).unwrap();
    ledger
        .append_detached_linked(b"outcome A".to_vec(), Link::Supersedes(7))
        .unwrap();
    assert_eq!(ledger.flush().await.unwrap(), 4);
    let written: Vec<Vec<u8>> = (1..4).map(|i| ledger.entry(i).unwrap()).collect();
    assert_eq!(
        written,
        [b"intent A".to_vec(), entry(1), b"outcome A".to_vec()]
    );
    ledger.close().await;
}

/// A record length damaged after open (on the disk under a running gateway) is refused on
/// read, wherever it is among the records a read walks: it neither sizes the read buffer (a
/// public entry-bundle request could have the gateway allocate up to 4 GiB) nor moves the read
/// to where no record starts.
#[tokio::test]
async fn a_record_length_damaged_after_open_is_refused_on_read() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..10).await;
    let segment = std::fs::OpenOptions::new()
        .write(true)
        .open(only_segment(tmp.path()))
        .unwrap();
    let offset = |index: u64| -> u64 { (0..index).map(|i| 8 + entry(i).len() as u64).sum() };
    // Above the limit, zero, and within the limit but running past the committed records.
    for (index, len) in [(2, 100u32 << 20), (2, 0), (9, 60_000)] {
        let at = offset(index);
        segment.write_all_at(&len.to_be_bytes(), at).unwrap();
        let refused = |result: Result<Vec<u8>, LedgerError>| {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, LedgerError::Corrupt { entry_index, offset, reason, .. } if *entry_index == index && *offset == at && reason.contains(&format!("record length {len} is invalid"))),
                "length {len}: {err}"
            );
        };
        refused(ledger.entry(index));
        // Read through on the way to a later entry of the same bundle.
        refused(ledger.entry(9));
        refused(ledger.read_entries(0, 10));
        let real = entry(index).len() as u32;
        segment.write_all_at(&real.to_be_bytes(), at).unwrap();
        assert_eq!(ledger.entry(9).unwrap(), entry(9));
    }
    ledger.close().await;
}

/// Each framed record of `data`, header included (test-side framing reader).
fn frames(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(data[pos..pos + 8 + len].to_vec());
        pos += 8 + len;
    }
    out
}

/// Opening reads checkpoints.log back from its end only as far as it must to find the last
/// note (the history grows by a note per checkpoint, gigabytes a year): a torn end longer than
/// a step back is still cut off, and damage far before the end no longer stops it, while
/// `postern audit verify`, which reads the whole history, still names it.
#[tokio::test]
async fn opening_reads_the_checkpoint_history_from_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = open(tmp.path()).await;
    append_n(&ledger, 0..3).await;
    ledger.checkpoint().unwrap();
    append_n(&ledger, 3..6).await;
    ledger.checkpoint().unwrap();
    ledger.close().await;
    // The history alone says which checkpoint is the latest.
    std::fs::remove_file(tmp.path().join("checkpoint")).unwrap();
    let history_path = tmp.path().join("checkpoints.log");
    let notes = frames(&std::fs::read(&history_path).unwrap());
    assert_eq!(notes.len(), 2);
    // A long history (the first note over and over: equal sizes may follow each other), then
    // the second note.
    let copies = (160 * 1024) / notes[0].len();
    let mut history = notes[0].repeat(copies);
    history.extend_from_slice(&notes[1]);

    // More zeros than a step back, where a crash left no note: cut off, up to the last note.
    let mut torn = history.clone();
    torn.resize(history.len() + 100 * 1024, 0);
    std::fs::write(&history_path, &torn).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.latest_checkpoint.unwrap().size, 6);
    ledger.close().await;
    assert_eq!(std::fs::read(&history_path).unwrap(), history);
    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!(verified.checkpoints_verified, copies + 1);

    // Damage in the first note, far from the end.
    history[10] ^= 0x01;
    std::fs::write(&history_path, &history).unwrap();
    let (ledger, report) = Ledger::open(tmp.path(), options()).await.unwrap();
    assert_eq!(report.latest_checkpoint.unwrap().size, 6);
    ledger.close().await;
    assert_eq!(std::fs::read(&history_path).unwrap(), history);
    let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, VerifyError::BadRecord { segment, offset: 0, .. } if *segment == history_path),
        "{err}"
    );
}

/// 400 entries of about 1 KiB: more than one write of records (256 KiB at most).
fn kilobyte_entries() -> Vec<Vec<u8>> {
    (0..400)
        .map(|i| format!("{{\"entry\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)).into_bytes())
        .collect()
}

/// After a crash, writeback may have stored a later page of the last batch written through the
/// page cache (direct I/O off, or refused by the filesystem) and not an earlier one, which then
/// reads as zeros. A segment written by hand that way: the damaged records and those after them
/// were never acknowledged (their write was not synced), so they are a torn tail, cut off; the
/// same page lost more than one write of records before the end is corruption.
#[tokio::test]
async fn a_page_lost_from_the_last_write_through_the_page_cache_is_a_torn_tail() {
    let entries = kilobyte_entries();
    let offsets: Vec<usize> = (0..=entries.len())
        .map(|i| entries[..i].iter().map(|e| 8 + e.len()).sum())
        .collect();
    let end = *offsets.last().unwrap();
    assert!(
        !end.is_multiple_of(4096),
        "the segment is not block-aligned"
    );
    let buffered = LedgerOptions {
        direct_io: false,
        ..options()
    };
    for (lost, torn) in [(end - 40 * 1024, true), (64 * 1024, false)] {
        let lost = lost.next_multiple_of(4096);
        let first_damaged = offsets.iter().rposition(|&at| at <= lost).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(tmp.path(), buffered.clone()).await.unwrap();
        ledger.close().await;
        let segment = only_segment(tmp.path());
        write_records(&segment, &entries);
        let mut data = std::fs::read(&segment).unwrap();
        data[lost..lost + 4096].fill(0);
        std::fs::write(&segment, &data).unwrap();
        if torn {
            let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
            assert_eq!(
                verified.torn_tail,
                Some((segment.clone(), offsets[first_damaged] as u64))
            );
            let (ledger, report) = Ledger::open(tmp.path(), buffered.clone()).await.unwrap();
            assert_eq!(report.entries, first_damaged as u64);
            let cut = report.torn_tail.unwrap();
            assert_eq!(cut.offset, offsets[first_damaged] as u64);
            assert_eq!(cut.discarded_bytes, (end - offsets[first_damaged]) as u64);
            assert_eq!(ledger.append(entry(0)).await.unwrap(), first_damaged as u64);
            ledger.close().await;
            verify_dir(tmp.path(), None, |_, _| {}).unwrap();
        } else {
            let err = verify_dir(tmp.path(), None, |_, _| {}).unwrap_err();
            assert!(
                matches!(err, VerifyError::BadRecord { entry_index, .. } if entry_index == first_damaged as u64),
                "{err}"
            );
            let err = Ledger::open(tmp.path(), buffered.clone())
                .await
                .unwrap_err();
            assert!(
                matches!(err, LedgerError::Corrupt { entry_index, .. } if entry_index == first_damaged as u64),
                "{err}"
            );
            assert_eq!(
                std::fs::read(&segment).unwrap(),
                data,
                "the file is left as it was"
            );
        }
    }
}

/// A batch larger than one write of records goes out in pieces through the page cache as it
/// does with direct I/O, and leaves the same file.
#[tokio::test]
async fn a_batch_larger_than_one_write_is_written_whole_either_way() {
    let mut segments = Vec::new();
    for direct_io in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let options = LedgerOptions {
            direct_io,
            ..options()
        };
        let (ledger, _) = Ledger::open(tmp.path(), options.clone()).await.unwrap();
        append_n(&ledger, 0..3).await;
        assert_eq!(ledger.append_many(kilobyte_entries()).await.unwrap(), 3);
        assert_eq!(ledger.entry(402).unwrap(), kilobyte_entries()[399]);
        ledger.close().await;
        let (ledger, report) = Ledger::open(tmp.path(), options).await.unwrap();
        assert_eq!((report.entries, report.torn_tail), (403, None));
        ledger.close().await;
        verify_dir(tmp.path(), None, |_, _| {}).unwrap();
        segments.push(segment_bytes(tmp.path()));
    }
    assert_eq!(segments[0], segments[1]);
}

/// A checkpoint history of 6,000 notes signed with the log's key, more than one chunk of the
/// file verify reads at a time: note `i` covers `i / 100` of the log's 60 entries. The key, the
/// notes' frames, and the directory's history path.
async fn long_history(dir: &Path) -> (NoteSigner, Vec<Vec<u8>>, PathBuf) {
    let ledger = open(dir).await;
    append_n(&ledger, 0..60).await;
    ledger.checkpoint().unwrap();
    ledger.close().await;
    let key = std::fs::read_to_string(dir.join("signing-key")).unwrap();
    let signer = NoteSigner::from_signer_key(key.trim()).unwrap();
    let notes = (0..6000)
        .map(|i| framed(&signed_note(&signer, i / 100, None)))
        .collect();
    (signer, notes, dir.join("checkpoints.log"))
}

/// The checkpoint of the first `size` test entries (or one with `root` instead), signed.
fn signed_note(signer: &NoteSigner, size: u64, root: Option<postern_tlog::Hash>) -> String {
    let mut builder = postern_tlog::TreeBuilder::new();
    for i in 0..size {
        builder.append(leaf_hash(&entry(i)), &mut Vec::new());
    }
    let checkpoint = Checkpoint {
        origin: ORIGIN.to_string(),
        size,
        root_hash: root.unwrap_or_else(|| builder.root()),
    };
    checkpoint.sign(signer).unwrap()
}

fn framed(note: &str) -> Vec<u8> {
    let mut frame = (note.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(note.as_bytes()).to_be_bytes());
    frame.extend_from_slice(note.as_bytes());
    frame
}

/// Verify reads the checkpoint history a chunk at a time and compares its notes with the tree
/// one at a time, and still catches, in a long one, a note that does not verify, a size that
/// goes backwards, a root that differs, a damaged record, in the order it always named them,
/// and reports a torn last note.
#[tokio::test]
async fn a_long_history_is_verified_a_note_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, notes, history_path) = long_history(tmp.path()).await;
    let offset = |n: usize| notes[..n].iter().map(Vec::len).sum::<usize>() as u64;
    let which = |n: usize| {
        format!(
            "checkpoint #{n} in {} (byte offset {})",
            history_path.display(),
            offset(n)
        )
    };
    let verify_with = |notes: &[Vec<u8>]| {
        std::fs::write(&history_path, notes.concat()).unwrap();
        verify_dir(tmp.path(), None, |_, _| {})
    };
    assert!(notes.concat().len() > 1 << 20, "more than one chunk");
    let verified = verify_with(&notes).unwrap();
    assert_eq!(verified.checkpoints_verified, 6001);
    assert_eq!(verified.latest_checkpoint.unwrap().size, 60);
    assert_eq!(verified.torn_tail, None);

    // A signature changed in the middle (its record intact).
    let mut bad_signature = notes.clone();
    let mut note = String::from_utf8(notes[3000][8..].to_vec()).unwrap();
    let at = note.len() - 10;
    let flipped = if &note[at..at + 1] == "A" { "B" } else { "A" };
    note.replace_range(at..at + 1, flipped);
    bad_signature[3000] = framed(&note);
    let err = verify_with(&bad_signature).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CheckpointSignature { which: w, .. } if *w == which(3000)),
        "{err}"
    );

    // A size that goes backwards: a well-signed note of 10 entries after one of 39.
    let mut backwards = notes.clone();
    backwards[4000] = framed(&signed_note(&signer, 10, None));
    let err = verify_with(&backwards).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CheckpointRollback { which: w, size: 10, previous: 39 } if *w == which(4000)),
        "{err}"
    );
    // A note that does not verify after it is still named first, as when every signature was
    // checked before the sizes were.
    backwards[4500] = bad_signature[3000].clone();
    let err = verify_with(&backwards).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CheckpointSignature { which: w, .. } if *w == which(4500)),
        "{err}"
    );

    // A well-signed note whose root is not the entries'.
    let mut other_root = notes.clone();
    other_root[2500] = framed(&signed_note(&signer, 25, Some(postern_tlog::Hash([7; 32]))));
    let err = verify_with(&other_root).unwrap_err();
    assert!(
        matches!(&err, VerifyError::CheckpointRootMismatch { which: w, size: 25 } if *w == which(2500)),
        "{err}"
    );
    // A damaged record after it is named first, as when the whole file was read first.
    other_root[5000][20] ^= 0x01;
    let err = verify_with(&other_root).unwrap_err();
    assert!(
        matches!(&err, VerifyError::BadRecord { segment, offset: o, entry_index: 5000, .. } if *segment == history_path && *o == offset(5000)),
        "{err}"
    );

    // The last note cut short: a torn tail, not an error; the note before it is checked.
    let mut torn = notes.concat();
    torn.truncate(torn.len() - 30);
    std::fs::write(&history_path, &torn).unwrap();
    let verified = verify_dir(tmp.path(), None, |_, _| {}).unwrap();
    assert_eq!(
        verified.torn_tail,
        Some((history_path.clone(), offset(5999)))
    );
    assert_eq!(verified.checkpoints_verified, 6000);
}
