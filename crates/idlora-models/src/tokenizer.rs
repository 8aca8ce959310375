//! Tokenizers from `tokenizer.json` (the `tokenizers` crate, pure-Rust regex) or rebuilt from GGUF
//! metadata, and chat templates (Jinja, through minijinja).

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{ModelError, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence tokens (generation stops at any of them).
    pub eos: Vec<u32>,
    /// Whether encoding a prompt prepends BOS.
    pub add_bos: bool,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
}

fn tok_err(source: &str, key: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config { source_name: source.to_string(), key: key.to_string(), message: message.into() }
}

/// The pre-tokenizers of the GGUF `tokenizer.ggml.pre` values we rebuild (llama.cpp's names).
fn pre_tokenizer(pre: &str, source: &str) -> Result<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "gpt2" | "default" => byte_level(true),
        // SmolLM: every digit on its own, then GPT-2's split.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        other => {
            return Err(tok_err(
                source,
                "tokenizer.ggml.pre",
                format!(
                    "`{other}` is not supported (gpt2, smollm, llama-bpe); give a tokenizer.json instead"
                ),
            ));
        }
    })
}

impl Tokenizer {
    /// Rebuilds the tokenizer from GGUF metadata: byte-level BPE (`tokenizer.ggml.model = gpt2`:
    /// vocabulary and merges) or SentencePiece BPE (`llama`, as llama.cpp writes LLaMA 1/2 and
    /// Mistral: vocabulary, scores, byte fallback), with control tokens as special tokens,
    /// BOS/EOS and the chat template.
    pub fn from_gguf(file: &idlora_weights::gguf::GgufFile) -> Result<Self> {
        let source = file.path().display().to_string();
        let model = file.metadata_str("tokenizer.ggml.model")?;
        let strings = |key: &str| -> Result<Vec<String>> {
            file.metadata_value(key)?
                .as_array()
                .ok_or_else(|| tok_err(&source, key, "expected an array"))?
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| tok_err(&source, key, "expected strings"))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<u64> = match file.metadata_value("tokenizer.ggml.token_type") {
            Ok(v) => {
                v.as_array().map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect()).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        // llama.cpp token types: 2 = unknown, 3 = control, 4 = user-defined: matched whole.
        let added: Vec<Value> = types
            .iter()
            .enumerate()
            .filter(|&(i, &t)| (2..=4).contains(&t) && i < tokens.len())
            .map(|(i, &t)| {
                json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": t != 4})
            })
            .collect();
        // The parts that differ per model type: (normalizer, pre-tokenizer, decoder, model).
        let (normalizer, pre, decoder, bpe) = match model {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?;
                let pre = file.metadata_str("tokenizer.ggml.pre").unwrap_or("gpt2");
                (
                    Value::Null,
                    pre_tokenizer(pre, &source)?,
                    json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                    json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                           "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                           "ignore_merges": false, "vocab": vocab, "merges": merges}),
                )
            }
            "llama" => {
                let scores: Vec<f64> = file
                    .metadata_value("tokenizer.ggml.scores")?
                    .as_array()
                    .ok_or_else(|| tok_err(&source, "tokenizer.ggml.scores", "expected an array"))?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0))
                    .collect();
                if scores.len() != tokens.len() {
                    return Err(tok_err(
                        &source,
                        "tokenizer.ggml.scores",
                        format!("{} scores for {} tokens", scores.len(), tokens.len()),
                    ));
                }
                let unk = types.iter().position(|&t| t == 2).map(|i| tokens[i].clone());
                // SentencePiece's dummy prefix and spaces as `▁`, BPE with byte fallback, and
                // the inverse on decoding: the tokenizer.json transformers makes for these models.
                (
                    json!({"type": "Sequence", "normalizers": [
                        {"type": "Prepend", "prepend": "\u{2581}"},
                        {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]}),
                    Value::Null,
                    json!({"type": "Sequence", "decoders": [
                        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                        {"type": "ByteFallback"}, {"type": "Fuse"},
                        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
                    json!({"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                           "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                           "ignore_merges": false, "vocab": vocab,
                           "merges": sentencepiece_merges(&tokens, &scores, &types)}),
                )
            }
            other => {
                return Err(tok_err(
                    &source,
                    "tokenizer.ggml.model",
                    format!("`{other}` is not supported (gpt2, llama); give a tokenizer.json instead"),
                ));
            }
        };
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre,
            "post_processor": null,
            "decoder": decoder,
            "model": bpe,
        });
        let inner = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| tok_err(&source, "tokenizer.ggml.*", format!("cannot build the tokenizer: {e}")))?;
        let id = |key: &str| file.metadata_u64(key).ok().map(|v| v as u32);
        Ok(Tokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            // A GGUF bool (older writers used an integer 1).
            add_bos: matches!(file.metadata_value("tokenizer.ggml.add_bos_token"),
                Ok(v) if matches!(v, idlora_weights::gguf::GgufValue::Bool(true)) || v.as_u64() == Some(1)),
            chat_template: file.metadata_str("tokenizer.chat_template").ok().map(str::to_string),
        })
    }

    /// Loads `tokenizer.json` from a model folder, with `tokenizer_config.json` (chat template,
    /// BOS/EOS, `add_bos_token`) when present. `eos_ids` from the model config are added.
    pub fn from_dir(dir: &Path, eos_ids: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| tok_err(&path.display().to_string(), "tokenizer.json", e.to_string()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                tok_err(&cfg_path.display().to_string(), "tokenizer_config.json", e.to_string())
            })?,
            Err(_) => Value::Null,
        };
        let token = |key: &str| -> Option<u32> {
            let v = cfg.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(s)
        };
        let mut eos: Vec<u32> = eos_ids.to_vec();
        if let Some(e) = token("eos_token")
            && !eos.contains(&e)
        {
            eos.push(e);
        }
        Ok(Tokenizer {
            bos: token("bos_token"),
            eos,
            add_bos: cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            chat_template: cfg.get("chat_template").and_then(Value::as_str).map(str::to_string),
            inner,
        })
    }

    /// Token ids of `text` (BOS first when the tokenizer asks for it). Special-token strings in the
    /// text (such as `<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode(text, false).map_err(|e| ModelError::Input(format!("tokenizing: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` without BOS, whatever the tokenizer's setting: for a piece that follows
    /// other text, such as a response after its prompt.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode(text, false).map_err(|e| ModelError::Input(format!("tokenizing: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| ModelError::Input(format!("decoding: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (BOS, EOS, `add_bos_token`, chat
    /// template) into `dir`, atomically: what [`Tokenizer::from_dir`] and transformers'
    /// `AutoTokenizer` read. A tokenizer rebuilt from GGUF metadata becomes a plain folder.
    pub fn save_dir(&self, dir: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(false)
            .map_err(|e| ModelError::Input(format!("serialising the tokenizer: {e}")))?;
        write(&dir.join("tokenizer.json"), json.as_bytes())?;
        let token_text = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token_text(self.bos),
            "eos_token": token_text(self.eos.first().copied()),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        });
        write(&dir.join("tokenizer_config.json"), config.to_string().as_bytes())
    }

    /// Renders the chat template for `messages` (with the assistant turn opened when
    /// `add_generation_prompt`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::Input("this model has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| ModelError::Input(format!("chat template: {e}")))?;
        let token_text = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default();
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => token_text(self.bos),
            eos_token => token_text(self.eos.first().copied()),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| ModelError::Input(format!("chat template: {e}")))
    }
}

/// BPE merges equivalent to a SentencePiece BPE model's scores (what transformers' converter
/// does): every split of a normal token into two tokens of the vocabulary is a merge, ranked by the
/// merged token's score, highest first (ties: the order of the left, then the right token's id).
fn sentencepiece_merges(tokens: &[String], scores: &[f64], types: &[u64]) -> Vec<(String, String)> {
    let ids: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        // Normal tokens only (type 1, or no types given): control and byte tokens never merge.
        if types.get(i).is_some_and(|&t| t != 1) {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&piece[..at]), ids.get(&piece[at..])) {
                merges.push((scores[i], l, r, i));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|(_, l, r, _)| (tokens[l].clone(), tokens[r].clone())).collect()
}

/// The tokenizer of the model at `path`: rebuilt from GGUF metadata for a `.gguf` file, else
/// `tokenizer.json` (+ `tokenizer_config.json`) from the model folder.
pub fn load_tokenizer(path: &Path, eos_ids: &[u32]) -> Result<Tokenizer> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        let file = idlora_weights::gguf::GgufFile::open(path)?;
        return Tokenizer::from_gguf(&file);
    }
    let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
    Tokenizer::from_dir(dir, eos_ids)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    idlora_data::write_atomic(path, bytes).map_err(|e| ModelError::Io { path: e.path, source: e.source })
}
