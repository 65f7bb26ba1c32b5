// Fin codec throughput: routing-field extraction + validation (fingate::fin, simdjson on-demand)
// side by side with simdjson's own DOM parse (simdjson::dom::parser) of the same bytes.
//
// Inputs: every captured vector (tests/data/vectors/MANIFEST.json) and a ~1 KB command
// (vector 13 with its variables padded). Per input:
//   codec/<input>        parseInto() from a buffer with kPadding spare bytes (no copy), result
//                        reused, default Validation::Routing
//   codec_full/<input>   the same with Validation::Full (every byte of every message validated)
//   codec_copy/<input>   parseInto() with capacity == len (copied into the thread's padded buffer)
//   codec_parse/<input>  parse() returning a fresh ParseResult (allocates its strings)
//   dom/<input>          simdjson::dom::parser::parse() of the same padded bytes (tape only, no field access)
// items/s = messages per second on one core; bytes/s = payload bytes per second.
//
// This file includes simdjson.h only for the DOM baseline; the codec itself is used through
// fingate/fin_codec.hpp like every other caller.
#include <fingate/fin_codec.hpp>

#include <benchmark/benchmark.h>
#include <simdjson.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fin = fingate::fin;

struct Input {
  std::string name;
  std::string bytes;  // with kPadding spare bytes of capacity (see padded())
};

std::string readFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// Vector 13 with its `"variables":{}` filled until the message is ~1 KB.
std::string makeKilobyteCommand(const std::string& v13) {
  const std::string empty = "\"variables\":{}";
  size_t at = v13.find(empty);
  if (at == std::string::npos) return {};
  std::string vars;
  for (int i = 0; v13.size() + vars.size() < 1024 - 120; ++i) {
    if (i) vars += ',';
    vars += "\"__var" + std::to_string(i) + "__\":{\"type\":\"string\",\"name\":\"__var" + std::to_string(i) +
            "__\",\"description\":\"padding\",\"value\":\"10.0.0." + std::to_string(i) +
            "\",\"constant\":false,\"external\":false}";
  }
  std::string out = v13.substr(0, at) + "\"variables\":{" + vars + "}" + v13.substr(at + empty.size());
  return out;
}

std::vector<Input> loadInputs() {
  std::string dir = FINGATE_VECTORS_DIR;
  simdjson::dom::parser p;
  simdjson::dom::element manifest;
  if (p.load(dir + "/MANIFEST.json").get(manifest)) {
    std::fprintf(stderr, "cannot read %s/MANIFEST.json\n", dir.c_str());
    std::exit(1);
  }
  std::vector<Input> out;
  std::string v13;
  for (simdjson::dom::element e : manifest.get_array()) {
    std::string_view file = e["file"].get_string();
    std::string bytes = readFile(dir + "/" + std::string(file));
    std::string name(file.substr(0, file.find('.')));
    if (name.rfind("13-", 0) == 0) v13 = bytes;
    out.push_back({name, bytes});
  }
  std::string kb = makeKilobyteCommand(v13);
  if (!kb.empty()) out.push_back({"command-1k(" + std::to_string(kb.size()) + "B)", kb});
  for (auto& in : out) {
    fin::ParseResult r = fin::parse(in.bytes);
    if (!r.ok) {
      std::fprintf(stderr, "input %s does not parse: %s\n", in.name.c_str(), r.error.c_str());
      std::exit(1);
    }
    in.bytes.reserve(in.bytes.size() + fin::kPadding);
  }
  return out;
}

void bmCodec(benchmark::State& state, const Input* in) {
  fin::ParseResult r;
  const std::string& b = in->bytes;
  for (auto _ : state) {
    fin::parseInto(r, b.data(), b.size(), b.capacity());
    benchmark::DoNotOptimize(r.ok);
    benchmark::DoNotOptimize(r.msg.message_id.data());
  }
  if (!r.ok) state.SkipWithError(r.error.c_str());
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(b.size()));
}

void bmCodecFull(benchmark::State& state, const Input* in) {
  fin::ParseResult r;
  const std::string& b = in->bytes;
  for (auto _ : state) {
    fin::parseInto(r, b.data(), b.size(), b.capacity(), fin::Validation::Full);
    benchmark::DoNotOptimize(r.ok);
    benchmark::DoNotOptimize(r.msg.message_id.data());
  }
  if (!r.ok) state.SkipWithError(r.error.c_str());
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(b.size()));
}

void bmCodecCopy(benchmark::State& state, const Input* in) {
  fin::ParseResult r;
  const std::string& b = in->bytes;
  for (auto _ : state) {
    fin::parseInto(r, b.data(), b.size(), b.size());
    benchmark::DoNotOptimize(r.ok);
    benchmark::DoNotOptimize(r.msg.message_id.data());
  }
  if (!r.ok) state.SkipWithError(r.error.c_str());
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(b.size()));
}

void bmCodecParse(benchmark::State& state, const Input* in) {
  const std::string& b = in->bytes;
  bool ok = true;
  for (auto _ : state) {
    fin::ParseResult r = fin::parse(b.data(), b.size(), b.capacity());
    ok &= r.ok;
    benchmark::DoNotOptimize(r);
  }
  if (!ok) state.SkipWithError("parse failed");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(b.size()));
}

void bmDom(benchmark::State& state, const Input* in) {
  simdjson::dom::parser parser;
  const std::string& b = in->bytes;
  bool ok = true;
  for (auto _ : state) {
    simdjson::dom::element doc;
    ok &= parser.parse(b.data(), b.size(), /*realloc_if_needed=*/false).get(doc) == simdjson::SUCCESS;
    benchmark::DoNotOptimize(doc);
  }
  if (!ok) state.SkipWithError("dom parse failed");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(b.size()));
}

}  // namespace

int main(int argc, char** argv) {
  static std::vector<Input> inputs = loadInputs();
  for (const auto& in : inputs) {
    benchmark::RegisterBenchmark(("codec/" + in.name).c_str(), bmCodec, &in);
    benchmark::RegisterBenchmark(("codec_full/" + in.name).c_str(), bmCodecFull, &in);
    benchmark::RegisterBenchmark(("dom/" + in.name).c_str(), bmDom, &in);
  }
  for (const auto& in : inputs) {
    benchmark::RegisterBenchmark(("codec_copy/" + in.name).c_str(), bmCodecCopy, &in);
    benchmark::RegisterBenchmark(("codec_parse/" + in.name).c_str(), bmCodecParse, &in);
  }
  benchmark::AddCustomContext("simdjson_active_implementation",
                              simdjson::get_active_implementation()->name());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
