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
    /// Rebuilds a byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`) from GGUF metadata:
    /// vocabulary, merges, control tokens as special tokens, BOS/EOS, chat template.
    pub fn from_gguf(file: &idlora_weights::gguf::GgufFile) -> Result<Self> {
        let source = file.path().display().to_string();
        let model = file.metadata_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(tok_err(
                &source,
                "tokenizer.ggml.model",
                format!("`{model}` is not supported (gpt2 / byte-level BPE); give a tokenizer.json instead"),
            ));
        }
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
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<u64> = match file.metadata_value("tokenizer.ggml.token_type") {
            Ok(v) => {
                v.as_array().map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect()).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        };
        let pre = file.metadata_str("tokenizer.ggml.pre").unwrap_or("gpt2");
        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        // llama.cpp token types: 3 = control, 4 = user-defined: both are matched whole.
        let added: Vec<Value> = types
            .iter()
            .enumerate()
            .filter(|&(_, &t)| t == 3 || t == 4)
            .map(|(i, &t)| {
                json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": t == 3})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer(pre, &source)?,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        let inner = tokenizers::Tokenizer::from_bytes(spec.to_string().as_bytes())
            .map_err(|e| tok_err(&source, "tokenizer.ggml.*", format!("cannot build the tokenizer: {e}")))?;
        let id = |key: &str| file.metadata_u64(key).ok().map(|v| v as u32);
        Ok(Tokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            add_bos: matches!(file.metadata_value("tokenizer.ggml.add_bos_token"), Ok(v) if v.as_u64() == Some(1)),
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
