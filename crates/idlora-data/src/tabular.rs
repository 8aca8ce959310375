//! Parquet and Arrow IPC (file or stream) tables as JSON rows, through arrow-rs: each record batch
//! is written with arrow-json, so nested columns become nested objects that dotted column paths
//! reach (`doc.question`), and every Arrow type has the same text form as in JSONL data.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use serde_json::Value;

/// Every row of the Parquet or Arrow file at `path`, as a JSON object; `None` when the file is
/// neither (by its first bytes: `PAR1`, `ARROW1`, or an IPC stream's continuation marker). Errors
/// are messages for [`crate::DataError::Data`].
pub fn read_rows(path: &Path) -> Result<Option<Vec<Value>>, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).map_err(|e| e.to_string())?;
    let magic = &magic[..n];
    if !(magic.starts_with(b"PAR1") || magic.starts_with(b"ARROW1") || magic.starts_with(&[0xff; 4])) {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let batches: Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>> = if magic.starts_with(b"PAR1") {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| format!("not a readable Parquet file: {e}"))?;
        Box::new(reader)
    } else if magic.starts_with(b"ARROW1") {
        let reader = arrow_ipc::reader::FileReader::try_new(file, None)
            .map_err(|e| format!("not a readable Arrow IPC file: {e}"))?;
        Box::new(reader)
    } else {
        let reader = arrow_ipc::reader::StreamReader::try_new(file, None)
            .map_err(|e| format!("not a readable Arrow IPC stream: {e}"))?;
        Box::new(reader)
    };
    let mut rows = Vec::new();
    for (i, batch) in batches.enumerate() {
        let batch = batch.map_err(|e| format!("record batch {}: {e}", i + 1))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let mut writer = arrow_json::ArrayWriter::new(Vec::new());
        writer.write(&batch).map_err(|e| format!("record batch {}: {e}", i + 1))?;
        writer.finish().map_err(|e| format!("record batch {}: {e}", i + 1))?;
        let values: Vec<Value> = serde_json::from_slice(&writer.into_inner())
            .map_err(|e| format!("record batch {} as JSON: {e}", i + 1))?;
        rows.extend(values);
    }
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn expected(key: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
        let v: Value = serde_json::from_str(&text).expect("json");
        v[key].as_array().expect("rows").clone()
    }

    #[test]
    fn hugging_face_stream_parquet_and_ipc_file_match_pyarrow() {
        let want = expected("mmlu");
        assert_eq!(want.len(), 5);
        assert_eq!(
            read_rows(&fixture("mmlu_abstract_algebra_dev.arrow")).expect("stream"),
            Some(want.clone())
        );
        assert_eq!(read_rows(&fixture("mmlu_abstract_algebra_dev.parquet")).expect("parquet"), Some(want));
        assert_eq!(read_rows(&fixture("nested.feather")).expect("ipc file"), Some(expected("nested")));
        assert_eq!(read_rows(&fixture("expected.json")).expect("text"), None);
    }

    #[test]
    fn truncated_files_are_errors() {
        let dir = tempfile::tempdir().expect("dir");
        for name in ["mmlu_abstract_algebra_dev.parquet", "nested.feather", "mmlu_abstract_algebra_dev.arrow"]
        {
            let bytes = std::fs::read(fixture(name)).expect("fixture");
            let cut = dir.path().join(name);
            std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
            assert!(read_rows(&cut).is_err(), "{name} cut in half was read");
        }
    }
}
