use super::*;

fn tiny_t5() -> T5Tokenizer {
    T5Tokenizer::new(tiny::t5().unwrap(), Path::new("<tiny t5>")).unwrap()
}
fn tiny_clip() -> ClipTokenizer {
    ClipTokenizer::new(tiny::clip().unwrap(), Path::new("<tiny clip>")).unwrap()
}

#[test]
fn tiny_vocab_sizes_match_the_tiny_configs() {
    let t5 = tiny_t5();
    assert_eq!(t5.vocab_size(), tiny::T5_TOKENS);
    const { assert!(tiny::T5_TOKENS <= tiny::T5_VOCAB && tiny::T5_VOCAB.is_multiple_of(8)) };
    let clip = tiny_clip();
    let (vocab, merges) = tiny::clip_vocab();
    assert_eq!(
        vocab.len(),
        512 + merges.len() + 2,
        "every merge makes a new token"
    );
    assert_eq!(clip.vocab_size(), tiny::CLIP_VOCAB);
    assert_eq!(
        clip.eos_id() as usize,
        tiny::CLIP_VOCAB - 1,
        "<|endoftext|> has the highest id, as in CLIP-L"
    );
    assert_eq!(clip.bos_id() as usize, tiny::CLIP_VOCAB - 2);
}

#[test]
fn tiny_t5_encodes_like_t5() {
    let t5 = tiny_t5();
    let e = t5.encode("a photo of a cat", 16).unwrap();
    assert_eq!(e.ids.len(), 16);
    assert_eq!((e.tokens, e.truncated), (6, false));
    let vocab = t5.inner().get_vocab(true);
    let want: Vec<u32> = ["▁a", "▁photo", "▁of", "▁a", "▁cat", "</s>"]
        .iter()
        .map(|t| vocab[*t])
        .collect();
    assert_eq!(&e.ids[..6], &want[..]);
    assert!(e.ids[6..].iter().all(|&i| i == t5.pad_id()));
    // Unknown words fall back to letters; characters outside the vocabulary to <unk>.
    let e = t5.encode("zebra 東", 16).unwrap();
    assert!(e.ids.contains(&vocab["<unk>"]), "{:?}", e.ids);
    // Sentinel text is one special token.
    let e = t5.encode("<extra_id_0>", 4).unwrap();
    assert_eq!(&e.ids[..2], &[vocab["<extra_id_0>"], t5.eos_id()]);
}

#[test]
fn t5_truncation_keeps_eos_last_and_reports_the_count() {
    let t5 = tiny_t5();
    let e = t5.encode("a cat and a dog on a red chair", 5).unwrap();
    assert_eq!(e.ids.len(), 5);
    assert_eq!(*e.ids.last().unwrap(), t5.eos_id());
    assert_eq!((e.tokens, e.truncated), (10, true));
    let empty = t5.encode("", 3).unwrap();
    assert_eq!(empty.ids, vec![t5.eos_id(), t5.pad_id(), t5.pad_id()]);
    assert_eq!((empty.tokens, empty.truncated), (1, false));
    let err = t5.encode("a", 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "max_len 1 leaves no room for the prompt: the T5 tokenizer adds 1 special token(s)"
    );
}

#[test]
fn clip_pads_with_eos_to_77() {
    let clip = tiny_clip();
    let e = clip.encode("A Photo of a CAT!").unwrap();
    assert_eq!(e.ids.len(), 77);
    let vocab = clip.inner().get_vocab(true);
    let want: Vec<u32> = [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "cat</w>",
        "!</w>",
        "<|endoftext|>",
    ]
    .iter()
    .map(|t| vocab[*t])
    .collect();
    assert_eq!(&e.ids[..8], &want[..]);
    assert!(e.ids[8..].iter().all(|&i| i == clip.eos_id()));
    assert_eq!((e.tokens, e.truncated), (8, false));
    let long = clip.encode(&"cat ".repeat(100)).unwrap();
    assert_eq!((long.tokens, long.truncated), (102, true));
    assert_eq!(long.ids[76], clip.eos_id());
    assert_eq!(long.ids[75], vocab["cat</w>"]);
}

#[test]
fn files_round_trip_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let t5_path = dir.path().join("t5-tokenizer.json");
    std::fs::write(&t5_path, tiny::t5_json().unwrap()).unwrap();
    let clip_path = dir.path().join("clip-tokenizer.json");
    std::fs::write(&clip_path, tiny::clip_json().unwrap()).unwrap();
    let prompt = "an old house in the snow, digital art";
    assert_eq!(
        T5Tokenizer::from_file(&t5_path)
            .unwrap()
            .encode(prompt, 20)
            .unwrap(),
        tiny_t5().encode(prompt, 20).unwrap()
    );
    assert_eq!(
        ClipTokenizer::from_file(&clip_path)
            .unwrap()
            .encode(prompt)
            .unwrap(),
        tiny_clip().encode(prompt).unwrap()
    );

    // vocab.json + merges.txt, as in FLUX's tokenizer/ folder.
    let (vocab, merges) = tiny::clip_vocab();
    let folder = dir.path().join("tokenizer");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("vocab.json"),
        serde_json::to_string(&vocab).unwrap(),
    )
    .unwrap();
    let text: String = std::iter::once("#version: 0.2\n".to_string())
        .chain(merges.iter().map(|(a, b)| format!("{a} {b}\n")))
        .collect();
    std::fs::write(folder.join("merges.txt"), text).unwrap();
    assert_eq!(
        ClipTokenizer::from_file(&folder)
            .unwrap()
            .encode(prompt)
            .unwrap(),
        tiny_clip().encode(prompt).unwrap()
    );

    let missing = dir.path().join("nope.json");
    let e = T5Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read tokenizer file {}", missing.display())),
        "{e}"
    );
    let e = ClipTokenizer::from_file(dir.path().join("clip.bin"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "clip.bin: don't know how to read this as a CLIP tokenizer: expected a tokenizer.json"
        ),
        "{e}"
    );
    let garbage = dir.path().join("tokenizer.json");
    std::fs::write(&garbage, "{\"version\": 1").unwrap();
    let e = T5Tokenizer::from_file(&garbage).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{} is not a valid tokenizer.json:",
            garbage.display()
        )),
        "{e}"
    );
    // A CLIP tokenizer is not a T5 tokenizer.
    let e = T5Tokenizer::from_file(&clip_path).unwrap_err().to_string();
    assert!(e.contains("the vocabulary has no `<pad>` token"), "{e}");
    let bad_merges = folder.join("merges.txt");
    std::fs::write(&bad_merges, "#version: 0.2\na b c\n").unwrap();
    let e = ClipTokenizer::from_file(&folder).unwrap_err().to_string();
    assert!(
        e.ends_with(
            "merges.txt is not a valid merges.txt: line 2: expected `left right`, found `a b c`"
        ),
        "{e}"
    );
    let spm = dir.path().join("spiece.model");
    std::fs::write(&spm, b"not protobuf").unwrap();
    let e = T5Tokenizer::from_file(&spm).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{} is not a valid SentencePiece model: not a valid SentencePiece model at byte",
            spm.display()
        )),
        "{e}"
    );
}

#[test]
fn tiny_umt5_has_umt5s_layout_and_byte_fallback() {
    let tok = T5Tokenizer::new(tiny::umt5().unwrap(), Path::new("<tiny umt5>")).unwrap();
    assert_eq!(tok.vocab_size(), tiny::UMT5_TOKENS);
    const { assert!(tiny::UMT5_TOKENS <= tiny::UMT5_VOCAB && tiny::UMT5_VOCAB.is_multiple_of(128)) };
    assert_eq!(
        tiny::UMT5_VOCAB,
        crate::models::t5::Config::tiny_umt5().vocab_size
    );
    let vocab = tok.inner().get_vocab(true);
    assert_eq!(
        [vocab["<pad>"], vocab["</s>"], vocab["<s>"], vocab["<unk>"]],
        [0, 1, 2, 3]
    );
    assert_eq!((vocab["<0x00>"], vocab["<0xFF>"]), (4, 259));
    assert_eq!((tok.pad_id(), tok.eos_id()), (0, 1));
    // A character outside the vocabulary becomes its UTF-8 bytes (東 = E6 9D B1), not <unk>.
    let e = tok.encode("a 東", 8).unwrap();
    let want: Vec<u32> = ["▁a", "▁", "<0xE6>", "<0x9D>", "<0xB1>", "</s>"]
        .iter()
        .map(|t| vocab[*t])
        .collect();
    assert_eq!(&e.ids[..6], &want[..]);
    assert_eq!(e.valid_len(), 6);
    assert!(!e.ids.contains(&3));
    // <s> is special text, as transformers treats umT5's bos_token.
    let e = tok.encode("<s>", 4).unwrap();
    assert_eq!(&e.ids[..2], &[2, 1]);
    // The tokenizer.json text loads back to the same pipeline.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tiny::umt5_json().unwrap()).unwrap();
    let back = T5Tokenizer::umt5_from_file(&path).unwrap();
    assert_eq!(
        back.encode("a 東 cat", 12).unwrap(),
        tok.encode("a 東 cat", 12).unwrap()
    );
    // valid_len counts the prompt and </s>, capped by truncation.
    let cut = tok.encode("a cat and a dog", 3).unwrap();
    assert_eq!((cut.valid_len(), cut.truncated), (3, true));
}

#[test]
fn weights_without_a_spiece_tensor_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5.safetensors");
    let t =
        candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("x".to_string(), t)]),
        &path,
    )
    .unwrap();
    let e = T5Tokenizer::umt5_from_file(&path).unwrap_err().to_string();
    assert!(e.contains("expected a 1-D U8 tensor `spiece_model`"), "{e}");
    let bad =
        candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("spiece_model".to_string(), bad)]),
        &path,
    )
    .unwrap();
    let e = T5Tokenizer::umt5_from_file(&path).unwrap_err().to_string();
    assert!(e.contains("found `spiece_model` as F32 [4]"), "{e}");
}
