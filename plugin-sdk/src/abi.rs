//! Batch encoding: how records and results cross the WebAssembly boundary.
//!
//! One packed byte buffer per call is markedly faster than a `list<record>`,
//! so both directions are a flat little-endian encoding that any language can
//! implement in a few dozen lines. The specification, byte by byte, is
//! `docs/plugin-abi.md`; the golden vectors every SDK must decode and
//! re-encode exactly are in `plugin-sdk/tests/vectors/`. In short:
//!
//! ```text
//! batch   := "SLB" u8 version, u32 count, record*
//! record  := str topic, i32 partition, i64 offset, i64 timestamp_ms (i64::MIN = none),
//!            bytes? key, bytes? value, u32 header_count, (str name, bytes? value)*
//! result  := "SLR" u8 version, u32 count, output*, u32 count, error*
//! output  := u32 source_index, u8 op (0 upsert, 1 delete), str output_name, bytes json_value
//!            (version 1 results have no `op`: every output is an upsert)
//! error   := u32 source_index, str reason
//! str     := u32 len, utf-8 bytes
//! bytes   := u32 len, bytes
//! bytes?  := u32 len (u32::MAX = absent), bytes
//! ```
//!
//! Batches are version [`BATCH_VERSION`], results [`RESULT_VERSION`]; a
//! host also reads results of version 1 (plugins built before deletes),
//! and any other version is reported naming both (see [`DecodeError`]).

use std::fmt;

/// One Kafka record as a plugin sees it. Borrows from the packed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the Unix epoch, if the record carries one.
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Headers<'a>,
}

/// Record headers, decoded lazily from the packed batch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Headers<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> Headers<'a> {
    pub const EMPTY: Headers<'static> = Headers { count: 0, raw: &[] };

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// All headers in order: (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let mut reader = Reader { buf: self.raw };
        (0..self.count).map_while(move |_| Some((reader.str().ok()?, reader.opt_bytes().ok()?)))
    }

    /// The first header with this name.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v)
    }
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One output value a plugin emitted for the record at `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub source: u32,
    pub op: Op,
    pub output: String,
    /// A JSON object, UTF-8: the row to upsert, or for a delete the
    /// declared key (an object of the key fields, or the value of a
    /// one-field key).
    pub value: Vec<u8>,
}

/// What an output does to its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Op {
    /// Insert, or replace what the key holds.
    #[default]
    Upsert,
    /// Remove what the key holds (nothing if it holds nothing).
    Delete,
}

/// A record the plugin rejected, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub source: u32,
    pub reason: String,
}

/// What `transform` returns for a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    pub outputs: Vec<OutputRecord>,
    pub errors: Vec<RecordError>,
}

/// The version of the packed batch (host to plugin) this SDK writes and
/// reads. Bumped on any change to its bytes.
pub const BATCH_VERSION: u8 = 1;

/// The version of the packed result (plugin to host) this SDK writes.
/// Version 2 added deletes (an `op` byte per output).
pub const RESULT_VERSION: u8 = 2;

/// The oldest result version a host still reads: plugins built before a
/// change keep working.
pub const OLDEST_RESULT_VERSION: u8 = 1;

/// The first four bytes of a packed batch: magic `SLB`, then [`BATCH_VERSION`].
pub const BATCH_HEADER: [u8; 4] = [b'S', b'L', b'B', BATCH_VERSION];

/// The first four bytes of a packed result: magic `SLR`, then [`RESULT_VERSION`].
pub const RESULT_HEADER: [u8; 4] = [b'S', b'L', b'R', RESULT_VERSION];

/// Which of the two encodings a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Host to plugin: the records of one call.
    Batch,
    /// Plugin to host: what the plugin made of them.
    Result,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Batch => "batch",
            Encoding::Result => "result",
        }
    }

    fn header(self) -> [u8; 4] {
        match self {
            Encoding::Batch => BATCH_HEADER,
            Encoding::Result => RESULT_HEADER,
        }
    }

    /// The version this SDK writes.
    pub fn version(self) -> u8 {
        match self {
            Encoding::Batch => BATCH_VERSION,
            Encoding::Result => RESULT_VERSION,
        }
    }

    /// Whether `header` (four bytes) is this encoding's, in a version its
    /// reader accepts.
    fn reads(self, header: &[u8]) -> bool {
        let versions = match self {
            Encoding::Batch => BATCH_VERSION..=BATCH_VERSION,
            Encoding::Result => OLDEST_RESULT_VERSION..=RESULT_VERSION,
        };
        header.len() == 4 && header[..3] == self.header()[..3] && versions.contains(&header[3])
    }
}

/// What is wrong with a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The buffer ends inside a field.
    Truncated,
    /// Bytes follow the last field.
    TrailingBytes,
    /// A `str` field (topic, header name, output name, reason) is not UTF-8.
    InvalidUtf8,
    /// A count is larger than the rest of the buffer could possibly hold.
    CountExceedsBuffer,
    /// An output's `op` byte is neither 0 (upsert) nor 1 (delete).
    UnknownOp,
    /// The buffer is the other encoding: a result where a batch was
    /// expected, or a batch where a result was.
    WrongEncoding,
    /// The header carries this version, which the reader does not read; 0
    /// when there is no header at all (an encoder from before the encoding had a
    /// version, or not a packed buffer).
    Version(u8),
}

/// Why a packed batch or result was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    pub encoding: Encoding,
    pub problem: Problem,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = self.encoding.name();
        let reason = match self.problem {
            Problem::Version(found) => return self.version_mismatch(f, found),
            Problem::Truncated => "truncated",
            Problem::TrailingBytes => "trailing bytes",
            Problem::InvalidUtf8 => "string is not UTF-8",
            Problem::CountExceedsBuffer => "count exceeds buffer",
            Problem::UnknownOp => "unknown output op",
            Problem::WrongEncoding => match self.encoding {
                Encoding::Batch => "it is a packed result, not a batch",
                Encoding::Result => "it is a packed batch, not a result",
            },
        };
        write!(f, "malformed packed {what}: {reason}")
    }
}

impl DecodeError {
    /// Batches go host to plugin, results plugin to host: name the side
    /// that is behind and what to rebuild.
    fn version_mismatch(&self, f: &mut fmt::Formatter<'_>, found: u8) -> fmt::Result {
        let ours = self.encoding.version();
        let (sender, reader, host, plugin) = match self.encoding {
            Encoding::Batch => ("host", "plugin's SDK", found, ours),
            Encoding::Result => ("plugin", "host", ours, found),
        };
        let version = |v: u8| {
            if v == 0 {
                "version 0 (unversioned)".to_string()
            } else {
                format!("version {v}")
            }
        };
        write!(
            f,
            "{sender} encoded the {what} with ABI {}, {reader} expects ABI {}: ",
            version(found),
            version(ours),
            what = self.encoding.name(),
        )?;
        if plugin < host {
            write!(
                f,
                "rebuild the plugin with the sluice-plugin-sdk for ABI {}",
                version(host)
            )
        } else {
            write!(
                f,
                "upgrade the host, or rebuild the plugin with the sluice-plugin-sdk for ABI {}",
                version(host)
            )
        }
    }
}

impl std::error::Error for DecodeError {}

const ABSENT: u32 = u32::MAX;
const NO_TIMESTAMP: i64 = i64::MIN;
/// Smallest encodings, to refuse absurd counts before allocating: a record
/// is 4 + 4 + 8 + 8 + 4 + 4 + 4 bytes with everything empty, a header
/// 4 + 4, an output 4 + 4 + 4 (and the op byte from version 2), an error
/// 4 + 4.
const MIN_RECORD: usize = 36;
const MIN_HEADER: usize = 8;
const MIN_OUTPUT: usize = 12;
const MIN_ERROR: usize = 8;

/// The output count of a packed result, read without decoding it (the host
/// checks its limits first). `None` unless the buffer starts with a result
/// header of a version the host reads and holds a count; [`decode_result`]
/// then says what is wrong.
pub fn result_output_count(buf: &[u8]) -> Option<u32> {
    let header = buf.get(..4)?;
    if !Encoding::Result.reads(header) {
        return None;
    }
    Some(u32::from_le_bytes(buf.get(4..8)?.try_into().unwrap()))
}

/// Appends records to a packed batch. The count is patched in by `finish`.
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BatchWriter {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

/// Header and count: where the records start.
const PREFIX: usize = 8;

impl BatchWriter {
    /// A writer with room for `bytes` of records (the header and count are
    /// extra).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(bytes + PREFIX);
        buf.extend_from_slice(&BATCH_HEADER);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Self { buf, count: 0 }
    }

    pub fn push<'h>(
        &mut self,
        record: &Record<'_>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let b = &mut self.buf;
        put_str(b, record.topic);
        b.extend_from_slice(&record.partition.to_le_bytes());
        b.extend_from_slice(&record.offset.to_le_bytes());
        b.extend_from_slice(&record.timestamp.unwrap_or(NO_TIMESTAMP).to_le_bytes());
        put_opt_bytes(b, record.key);
        put_opt_bytes(b, record.value);
        let count_at = b.len();
        b.extend_from_slice(&0u32.to_le_bytes());
        let mut n = 0u32;
        for (name, value) in headers {
            put_str(b, name);
            put_opt_bytes(b, value);
            n += 1;
        }
        b[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf[4..PREFIX].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Packs records (headers taken from each record) into one batch.
pub fn encode_batch<'a>(records: impl IntoIterator<Item = &'a Record<'a>>) -> Vec<u8> {
    let mut w = BatchWriter::default();
    for r in records {
        w.push(r, r.headers.iter());
    }
    w.finish()
}

/// Decodes a packed batch. Records borrow from `buf`; headers are checked
/// here and read lazily.
pub fn decode_batch(buf: &[u8]) -> Result<Vec<Record<'_>>, DecodeError> {
    batch(buf).map_err(|problem| DecodeError {
        encoding: Encoding::Batch,
        problem,
    })
}

fn batch(buf: &[u8]) -> Result<Vec<Record<'_>>, Problem> {
    let mut r = Reader { buf };
    r.header(Encoding::Batch)?;
    let count = r.count(MIN_RECORD)?;
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let topic = r.str()?;
        let partition = r.i32()?;
        let offset = r.i64()?;
        let ts = r.i64()?;
        let key = r.opt_bytes()?;
        let value = r.opt_bytes()?;
        let header_count = r.count(MIN_HEADER)?;
        let start = r.buf;
        for _ in 0..header_count {
            r.str()?;
            r.opt_bytes()?;
        }
        let raw = &start[..start.len() - r.buf.len()];
        records.push(Record {
            topic,
            partition,
            offset,
            timestamp: (ts != NO_TIMESTAMP).then_some(ts),
            key,
            value,
            headers: Headers {
                count: header_count,
                raw,
            },
        });
    }
    r.end()?;
    Ok(records)
}

pub fn encode_result(result: &BatchResult) -> Vec<u8> {
    let outputs: usize = result
        .outputs
        .iter()
        .map(|o| o.value.len() + o.output.len() + MIN_OUTPUT)
        .sum();
    let errors: usize = result
        .errors
        .iter()
        .map(|e| e.reason.len() + MIN_ERROR)
        .sum();
    let mut b = Vec::with_capacity(PREFIX + outputs + 4 + errors);
    b.extend_from_slice(&RESULT_HEADER);
    b.extend_from_slice(&(result.outputs.len() as u32).to_le_bytes());
    for o in &result.outputs {
        b.extend_from_slice(&o.source.to_le_bytes());
        b.push(match o.op {
            Op::Upsert => 0,
            Op::Delete => 1,
        });
        put_str(&mut b, &o.output);
        put_bytes(&mut b, &o.value);
    }
    b.extend_from_slice(&(result.errors.len() as u32).to_le_bytes());
    for e in &result.errors {
        b.extend_from_slice(&e.source.to_le_bytes());
        put_str(&mut b, &e.reason);
    }
    b
}

/// Decodes a packed result (the host does, for every call).
pub fn decode_result(buf: &[u8]) -> Result<BatchResult, DecodeError> {
    result(buf).map_err(|problem| DecodeError {
        encoding: Encoding::Result,
        problem,
    })
}

fn result(buf: &[u8]) -> Result<BatchResult, Problem> {
    let mut r = Reader { buf };
    let version = r.header(Encoding::Result)?;
    let n = r.count(MIN_OUTPUT)?;
    let mut outputs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let source = r.u32()?;
        let op = match version {
            1 => Op::Upsert,
            _ => match r.take(1)?[0] {
                0 => Op::Upsert,
                1 => Op::Delete,
                _ => return Err(Problem::UnknownOp),
            },
        };
        let output = r.str()?.to_owned();
        let value = r.bytes()?.to_vec();
        outputs.push(OutputRecord {
            source,
            op,
            output,
            value,
        });
    }
    let n = r.count(MIN_ERROR)?;
    let mut errors = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let source = r.u32()?;
        let reason = r.str()?.to_owned();
        errors.push(RecordError { source, reason });
    }
    r.end()?;
    Ok(BatchResult { outputs, errors })
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_bytes(b, s.as_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

fn put_opt_bytes(b: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => put_bytes(b, v),
        None => b.extend_from_slice(&ABSENT.to_le_bytes()),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Problem> {
        if self.buf.len() < n {
            return Err(Problem::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The four header bytes: magic, kind, version; the version.
    fn header(&mut self, encoding: Encoding) -> Result<u8, Problem> {
        let expected = encoding.header();
        let found = self.take(4)?;
        if encoding.reads(found) {
            return Ok(found[3]);
        }
        let other = match encoding {
            Encoding::Batch => RESULT_HEADER,
            Encoding::Result => BATCH_HEADER,
        };
        Err(match found {
            [b'S', b'L', kind, version] if *kind == expected[2] => Problem::Version(*version),
            [b'S', b'L', kind, _] if *kind == other[2] => Problem::WrongEncoding,
            _ => Problem::Version(0),
        })
    }

    /// A count of items at least `min_size` bytes each.
    fn count(&mut self, min_size: usize) -> Result<u32, Problem> {
        let n = self.u32()?;
        if n as usize > self.buf.len() / min_size {
            return Err(Problem::CountExceedsBuffer);
        }
        Ok(n)
    }

    fn u32(&mut self) -> Result<u32, Problem> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i32(&mut self) -> Result<i32, Problem> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i64(&mut self) -> Result<i64, Problem> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Problem> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, Problem> {
        match self.u32()? {
            ABSENT => Ok(None),
            n => self.take(n as usize).map(Some),
        }
    }

    fn str(&mut self) -> Result<&'a str, Problem> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Problem::InvalidUtf8)
    }

    fn end(&self) -> Result<(), Problem> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Problem::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = BatchWriter::default();
        let r = Record {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            key: Some(b"k1"),
            value: Some(br#"{"id":"a"}"#),
            headers: Headers::EMPTY,
        };
        w.push(&r, [("trace", Some(&b"x"[..])), ("empty", None)]);
        w.push(
            &Record {
                key: None,
                value: None,
                timestamp: None,
                offset: 42,
                ..r
            },
            [],
        );
        w.finish()
    }

    #[test]
    fn batch_round_trips() {
        let buf = sample();
        let recs = decode_batch(&buf).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].topic, "orders");
        assert_eq!(recs[0].partition, 2);
        assert_eq!(recs[0].offset, 41);
        assert_eq!(recs[0].timestamp, Some(1_700_000_000_000));
        assert_eq!(recs[0].key, Some(&b"k1"[..]));
        assert_eq!(recs[0].headers.get("trace"), Some(&b"x"[..]));
        assert_eq!(recs[0].headers.len(), 2);
        assert_eq!(recs[1].key, None);
        assert_eq!(recs[1].timestamp, None);
        assert!(recs[1].headers.is_empty());
        assert_eq!(encode_batch(&recs), buf);
    }

    #[test]
    fn truncated_or_hostile_batches_are_errors() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert!(decode_batch(&buf[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_batch(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let mut extra = buf.clone();
        extra.push(0);
        assert!(decode_batch(&extra).is_err());
    }

    #[test]
    fn result_round_trips() {
        let res = BatchResult {
            outputs: vec![OutputRecord {
                source: 0,
                op: Op::Upsert,
                output: "orders".into(),
                value: b"{}".to_vec(),
            }],
            errors: vec![RecordError {
                source: 1,
                reason: "missing id".into(),
            }],
        };
        let buf = encode_result(&res);
        assert_eq!(decode_result(&buf).unwrap(), res);
        assert_eq!(result_output_count(&buf), Some(1));
        assert!(decode_result(&buf[..buf.len() - 1]).is_err());
    }

    fn problem<T: fmt::Debug>(r: Result<T, DecodeError>) -> (Problem, String) {
        let e = r.unwrap_err();
        (e.problem, e.to_string())
    }

    #[test]
    fn buffers_start_with_their_header() {
        assert_eq!(&sample()[..4], b"SLB\x01");
        assert_eq!(&encode_result(&BatchResult::default())[..4], b"SLR\x02");
        assert_eq!(BATCH_HEADER[3], BATCH_VERSION);
        assert_eq!(RESULT_HEADER[3], RESULT_VERSION);
    }

    #[test]
    fn other_versions_are_named_with_both_numbers() {
        let mut batch = sample();
        batch[3] = BATCH_VERSION + 1;
        let (p, msg) = problem(decode_batch(&batch));
        assert_eq!(p, Problem::Version(BATCH_VERSION + 1));
        assert_eq!(
            msg,
            format!(
                "host encoded the batch with ABI version {}, plugin's SDK expects ABI version \
                 {BATCH_VERSION}: rebuild the plugin with the sluice-plugin-sdk for ABI version {}",
                BATCH_VERSION + 1,
                BATCH_VERSION + 1
            )
        );

        let mut result = encode_result(&BatchResult::default());
        result[3] = RESULT_VERSION + 1;
        let (p, msg) = problem(decode_result(&result));
        assert_eq!(p, Problem::Version(RESULT_VERSION + 1));
        assert!(msg.contains("upgrade the host"), "{msg}");
        assert_eq!(result_output_count(&result), None);
    }

    #[test]
    fn unversioned_results_ask_for_a_rebuild() {
        // What an SDK from before the header wrote: two zero counts.
        let (p, msg) = problem(decode_result(&[0; 8]));
        assert_eq!(p, Problem::Version(0));
        assert_eq!(
            msg,
            format!(
                "plugin encoded the result with ABI version 0 (unversioned), host expects ABI \
                 version {RESULT_VERSION}: rebuild the plugin with the sluice-plugin-sdk for ABI \
                 version {RESULT_VERSION}"
            )
        );
        assert_eq!(problem(decode_batch(&[0; 8])).0, Problem::Version(0));
    }

    #[test]
    fn deletes_travel_with_their_op_and_version_1_results_are_still_read() {
        let result = BatchResult {
            outputs: vec![
                OutputRecord {
                    source: 0,
                    op: Op::Upsert,
                    output: "orders".into(),
                    value: br#"{"id":"a"}"#.to_vec(),
                },
                OutputRecord {
                    source: 1,
                    op: Op::Delete,
                    output: "orders".into(),
                    value: br#""a""#.to_vec(),
                },
            ],
            errors: vec![],
        };
        let packed = encode_result(&result);
        assert_eq!(decode_result(&packed).unwrap(), result);
        // The same upsert as a version 1 plugin writes it: no op byte.
        let mut v1 = b"SLR\x01\x01\0\0\0\0\0\0\0".to_vec();
        v1.extend_from_slice(b"\x06\0\0\0orders\x0a\0\0\0{\"id\":\"a\"}\0\0\0\0");
        let old = decode_result(&v1).unwrap();
        assert_eq!(old.outputs, result.outputs[..1]);
        assert_eq!(result_output_count(&v1), Some(1));
        let mut bad = packed.clone();
        bad[12] = 7;
        assert_eq!(problem(decode_result(&bad)).0, Problem::UnknownOp);
    }

    #[test]
    fn a_result_is_not_a_batch() {
        let result = encode_result(&BatchResult::default());
        let (p, msg) = problem(decode_batch(&result));
        assert_eq!(p, Problem::WrongEncoding);
        assert_eq!(
            msg,
            "malformed packed batch: it is a packed result, not a batch"
        );
        assert_eq!(problem(decode_result(&sample())).0, Problem::WrongEncoding);
    }

    #[test]
    fn counts_beyond_the_buffer_are_refused_before_allocating() {
        let mut batch = BATCH_HEADER.to_vec();
        batch.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(problem(decode_batch(&batch)).0, Problem::CountExceedsBuffer);
        let mut result = RESULT_HEADER.to_vec();
        result.extend_from_slice(&0u32.to_le_bytes());
        result.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            problem(decode_result(&result)).0,
            Problem::CountExceedsBuffer
        );
    }
}
