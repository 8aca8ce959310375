//! Reading training records: JSON arrays or JSONL (optionally gzip-compressed), Parquet, and Arrow
//! IPC files or streams (what Hugging Face `datasets` writes), in Alpaca, GSM8K or named-column
//! layouts. The file kind is told by its first bytes, not its name. Malformed records are counted and reported with their line, never dropped
//! silently.
//!
//! ```
//! use idlora_data::records::{Format, read_records};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("math.jsonl");
//! std::fs::write(&path, "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n{\"question\": 3}\n")?;
//! let read = read_records(&path, &Format::Gsm8k)?;
//! assert_eq!(read.records.len(), 1);
//! assert_eq!(read.malformed[0].location, "line 2");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// Field names of a `columns` layout; dotted paths reach into nested objects (`doc.question`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    /// The instruction (or question).
    pub instruction: String,
    /// Optional extra input.
    pub input: Option<String>,
    /// The response (or answer).
    pub output: String,
}

/// Record layout of a data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// `instruction`, `input`, `output` (Alpaca, CodeAlpaca, Saferpaca).
    Alpaca,
    /// `question`, `answer` (also inside a `doc` object, as evaluation harnesses store it).
    Gsm8k,
    /// Named fields.
    Columns(Columns),
}

/// One instruction-following record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The instruction (or question).
    pub instruction: String,
    /// Extra input; empty when absent.
    pub input: String,
    /// The response the model learns to give.
    pub output: String,
}

/// A record that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// `line N` (JSONL), `record N` (JSON array) or `row N` (Parquet, Arrow), 1-based.
    pub location: String,
    /// What is wrong.
    pub reason: String,
}

/// The records of one file.
#[derive(Clone, Debug)]
pub struct SourceRecords {
    /// The file.
    pub path: PathBuf,
    /// Usable records, in file order.
    pub records: Vec<Record>,
    /// Unusable ones.
    pub malformed: Vec<Malformed>,
}

/// One row of a data file, before any field is read: where it is (`line 7`, `record 3`, `row 12`,
/// 1-based) and its JSON value, or why the line is not JSON.
pub type RawRow = (String, std::result::Result<Value, String>);

/// Every row of a JSON array, JSONL (optionally `.gz`), Parquet or Arrow IPC file, as JSON values
/// with their locations: the reader shared by training data and benchmark data. A file that is
/// none of these is an error naming it; a JSONL line that is not JSON is kept as an `Err` row.
pub fn read_rows(path: &Path) -> Result<Vec<RawRow>> {
    let data_err = |message: String| DataError::Data { path: path.to_path_buf(), message };
    let mut items: Vec<RawRow> = Vec::new();
    if let Some(rows) = crate::tabular::read_rows(path).map_err(data_err)? {
        items.extend(rows.into_iter().enumerate().map(|(i, v)| (format!("row {}", i + 1), Ok(v))));
        return Ok(items);
    }
    let text = read_text(path)?;
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(&text)
            .map_err(|e| data_err(format!("not a valid JSON array of records: {e}")))?;
        items.extend(values.into_iter().enumerate().map(|(i, v)| (format!("record {}", i + 1), Ok(v))));
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(line).map_err(|e| format!("not JSON: {e}"));
            items.push((format!("line {}", i + 1), parsed));
        }
    }
    Ok(items)
}

/// Reads every record of `path` in `format`. A file that is not JSON / JSONL at all is an error; a
/// bad record is listed in [`SourceRecords::malformed`].
pub fn read_records(path: &Path, format: &Format) -> Result<SourceRecords> {
    finish(path, read_rows(path)?, format)
}

fn finish(path: &Path, items: Vec<RawRow>, format: &Format) -> Result<SourceRecords> {
    let data_err = |message: String| DataError::Data { path: path.to_path_buf(), message };
    if items.is_empty() {
        return Err(data_err("holds no record".into()));
    }
    let mut records = Vec::new();
    let mut malformed = Vec::new();
    for (location, parsed) in items {
        match parsed.and_then(|v| extract(&v, format)) {
            Ok(r) => records.push(r),
            Err(reason) => malformed.push(Malformed { location, reason }),
        }
    }
    Ok(SourceRecords { path: path.to_path_buf(), records, malformed })
}

fn read_text(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    if gz {
        flate2::read::GzDecoder::new(file).read_to_end(&mut bytes).map_err(|e| DataError::Data {
            path: path.to_path_buf(),
            message: format!("bad gzip data: {e}"),
        })?;
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes).map_err(io(path))?;
    }
    String::from_utf8(bytes).map_err(|e| DataError::Data {
        path: path.to_path_buf(),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })
}

/// The field at a dotted path (`doc.question`).
fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, part| cur.get(part))
}

fn text_field(v: &Value, path: &str, required: bool) -> std::result::Result<String, String> {
    match field(v, path) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Null) | None if !required => Ok(String::new()),
        Some(Value::Null) | None => Err(format!("missing field `{path}`")),
        Some(other) => Err(format!("field `{path}` is {}, not text", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn extract(v: &Value, format: &Format) -> std::result::Result<Record, String> {
    if !v.is_object() {
        return Err(format!("is {}, not an object", kind(v)));
    }
    let gsm8k;
    let cols = match format {
        Format::Alpaca => &Columns {
            instruction: "instruction".into(),
            input: Some("input".into()),
            output: "output".into(),
        },
        Format::Gsm8k => {
            // Evaluation harnesses wrap the record in `doc`.
            let prefix = if v.get("question").is_none() && v.get("doc").is_some() { "doc." } else { "" };
            gsm8k = Columns {
                instruction: format!("{prefix}question"),
                input: None,
                output: format!("{prefix}answer"),
            };
            &gsm8k
        }
        Format::Columns(c) => c,
    };
    let instruction = text_field(v, &cols.instruction, true)?;
    let input = match &cols.input {
        Some(p) => text_field(v, p, false)?,
        None => String::new(),
    };
    let output = text_field(v, &cols.output, true)?;
    if instruction.trim().is_empty() {
        return Err(format!("field `{}` is empty", cols.instruction));
    }
    if output.trim().is_empty() {
        return Err(format!("field `{}` is empty", cols.output));
    }
    Ok(Record { instruction, input, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn alpaca_array_with_bad_records_reports_each() {
        let (_d, p) = write(
            "a.json",
            r#"[{"instruction": "Say hi", "input": "", "output": "Hi"},
                {"instruction": "No output"},
                {"instruction": "Sum", "input": "1 2", "output": 3},
                {"instruction": ["x"], "output": "y"},
                7]"#,
        );
        let r = read_records(&p, &Format::Alpaca).expect("read");
        assert_eq!(r.records.len(), 2);
        assert_eq!(
            r.records[1],
            Record { instruction: "Sum".into(), input: "1 2".into(), output: "3".into() }
        );
        let m: Vec<(&str, &str)> =
            r.malformed.iter().map(|m| (m.location.as_str(), m.reason.as_str())).collect();
        assert_eq!(
            m,
            [
                ("record 2", "missing field `output`"),
                ("record 4", "field `instruction` is a list, not text"),
                ("record 5", "is a number, not an object"),
            ]
        );
    }

    #[test]
    fn jsonl_gzip_and_nested_gsm8k() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("g.jsonl.gz");
        let text = "{\"doc\": {\"question\": \"Q1\", \"answer\": \"A\\n#### 1\"}}\n\n{oops\n";
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, text.as_bytes()).expect("gz");
        std::fs::write(&p, enc.finish().expect("gz")).expect("write");
        let r = read_records(&p, &Format::Gsm8k).expect("read");
        assert_eq!(
            r.records,
            [Record { instruction: "Q1".into(), input: String::new(), output: "A\n#### 1".into() }]
        );
        assert_eq!(r.malformed.len(), 1);
        assert_eq!(r.malformed[0].location, "line 3");
        assert!(r.malformed[0].reason.starts_with("not JSON"), "{:?}", r.malformed);
    }

    #[test]
    fn hugging_face_arrow_and_parquet_tables() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let cols = Columns {
            instruction: "question".into(),
            input: Some("subject".into()),
            output: "answer".into(),
        };
        for name in ["mmlu_abstract_algebra_dev.arrow", "mmlu_abstract_algebra_dev.parquet"] {
            let r = read_records(&fixtures.join(name), &Format::Columns(cols.clone())).expect(name);
            assert_eq!(r.records.len(), 5, "{name}");
            assert!(r.malformed.is_empty(), "{name}");
            assert_eq!(r.records[0].instruction, "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.");
            assert_eq!(
                (r.records[0].input.as_str(), r.records[0].output.as_str()),
                ("abstract_algebra", "1")
            );
        }
        // A list column is not text: each row is reported, none dropped silently.
        let bad = Columns { instruction: "question".into(), input: None, output: "choices".into() };
        let r = read_records(&fixtures.join("mmlu_abstract_algebra_dev.arrow"), &Format::Columns(bad))
            .expect("read");
        assert_eq!(r.malformed.len(), 5);
        assert_eq!(
            (r.malformed[4].location.as_str(), r.malformed[4].reason.as_str()),
            ("row 5", "field `choices` is a list, not text")
        );
        let g = read_records(&fixtures.join("nested.feather"), &Format::Gsm8k).expect("nested");
        assert_eq!(
            g.records[1],
            Record { instruction: "2+3?".into(), input: String::new(), output: "#### 5".into() }
        );
    }

    #[test]
    fn columns_and_file_errors() {
        let (_d, p) = write("c.jsonl", "{\"q\": {\"text\": \"Why?\"}, \"a\": \"Because.\"}\n");
        let cols = Columns { instruction: "q.text".into(), input: None, output: "a".into() };
        let r = read_records(&p, &Format::Columns(cols)).expect("read");
        assert_eq!(r.records[0].instruction, "Why?");
        let (_d2, empty) = write("e.jsonl", "\n\n");
        let e = read_records(&empty, &Format::Alpaca).expect_err("empty");
        assert!(e.to_string().contains("e.jsonl: holds no record"), "{e}");
        let (_d3, bad) = write("b.json", "[{\"instruction\": 1,");
        let e = read_records(&bad, &Format::Alpaca).expect_err("bad array");
        assert!(e.to_string().contains("not a valid JSON array"), "{e}");
        let e = read_records(Path::new("/no/such/file.json"), &Format::Alpaca).expect_err("missing");
        assert!(e.to_string().contains("/no/such/file.json"), "{e}");
    }
}
