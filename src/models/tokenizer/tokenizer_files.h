// Readers and writer of byte-level BPE tokenizer files in the two HuggingFace layouts.
//
// tokenizer.json (the "fast" layout): model.type "BPE", model.vocab {token: id}, model.merges
// as "left right" strings or [left, right] pairs, added_tokens [{id, content, special, ...}],
// normalizer NFC or null, and the Qwen2 pre-tokenizer (a Split on the Qwen2 pattern followed by
// ByteLevel). Settings this tokenizer does not implement (another pattern or normaliser, BPE
// dropout, subword prefixes, byte fallback, a post-processor that adds tokens) are rejected,
// because loading them anyway would encode differently from the reference.
//
// vocab.json + merges.txt (the "slow" Qwen2Tokenizer layout): the vocabulary object and one
// merge per line, a first line "#version..." skipped; added tokens come from the optional
// added_tokens.json {content: id} and tokenizer_config.json "added_tokens_decoder"
// {id: {content, special, ...}}. Qwen2Tokenizer normalises to NFC and splits with the Qwen2
// pattern, which this layout does not record.
//
// Every error is an InvalidInputError that names the file and the entry (JSON field path,
// merge index or line number).
#pragma once

#include <filesystem>

#include "models/tokenizer/bpe_vocabulary.h"

namespace ethereal {

BpeVocabulary read_tokenizer_json(const std::filesystem::path& path);

// `added_tokens_json` and `tokenizer_config_json` may be empty paths for "absent".
BpeVocabulary read_vocab_and_merges(const std::filesystem::path& vocab_json,
                                    const std::filesystem::path& merges_txt,
                                    const std::filesystem::path& added_tokens_json = {},
                                    const std::filesystem::path& tokenizer_config_json = {});

// Writes `vocabulary` as a tokenizer.json that read_tokenizer_json() and HuggingFace
// tokenizers load: the Qwen2 pre-tokenizer, ByteLevel decoding, and NFC when vocabulary.nfc.
// Throws IoError when the file cannot be written.
void write_tokenizer_json(const BpeVocabulary& vocabulary, const std::filesystem::path& path);

}  // namespace ethereal
