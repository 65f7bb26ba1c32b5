// libFuzzer target for the Fin codec (core/include/fingate/fin_codec.hpp, fin_compat.hpp):
// parse / parseInto in both validation modes, validateId, makeAck/makeNack, appendJsonEscaped
// and the Python-fin command repair.
//
// Input: the bytes of one message as it arrives from a transport.
// Checked (beside ASan/UBSan): never throws; the padded (no copy) and unpadded (copy) paths and a
// reused ParseResult all agree; Validation::Full is stricter than Routing (what Full accepts,
// Routing accepts, with the same routing fields); an accepted register/unregister has ids that
// validateId judges, and no accepted id is reserved; an ack/nack written for a readable
// message_id parses back to the same message_id; the repair of a valid command is still a valid
// command with the same routing fields; escaped JSON text never holds a raw character below 0x20 nor an unescaped quote.
//
// Build and run: scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined).
#include <fingate/fin_codec.hpp>
#include <fingate/fin_compat.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_check.hpp"

namespace fin = fingate::fin;

namespace {


bool sameRouting(const fin::Routing& a, const fin::Routing& b) {
  return a.type == b.type && a.message_id == b.message_id && a.message_id_readable == b.message_id_readable &&
         a.fin_id == b.fin_id && a.capability_ids == b.capability_ids && a.capability_id == b.capability_id &&
         a.all == b.all;
}

bool same(const fin::ParseResult& a, const fin::ParseResult& b) {
  return a.ok == b.ok && a.error == b.error && (!a.ok || sameRouting(a.msg, b.msg));
}

void checkEscaped(std::string_view s) {
  std::string out;
  fin::appendJsonEscaped(out, s);
  for (char c : out) CHECK(static_cast<unsigned char>(c) >= 0x20);  // DEL stays raw, as in Go
  // Every '"' in the output is escaped.
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i] == '"') CHECK(i > 0 && out[i - 1] == '\\');
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* bytes = reinterpret_cast<const char*>(data);
  // The padded path: the buffer has kPadding readable bytes past the end (no copy).
  std::vector<char> padded(size + fin::kPadding, '\0');
  if (size) std::memcpy(padded.data(), data, size);

  fin::ParseResult unpadded = fin::parse(bytes, size, size);
  fin::ParseResult pad;
  fin::parseInto(pad, padded.data(), size, padded.size(), fin::Validation::Routing);
  CHECK(same(unpadded, pad));
  CHECK(pad.ok == pad.error.empty());

  fin::ParseResult full;
  fin::parseInto(full, padded.data(), size, padded.size(), fin::Validation::Full);
  if (full.ok) {
    CHECK(pad.ok);
    CHECK(sameRouting(full.msg, pad.msg));
  }
  // A ParseResult reused after another message gives the same answer as a fresh one.
  static fin::ParseResult reused;
  fin::parseInto(reused, padded.data(), size, padded.size(), fin::Validation::Full);
  CHECK(same(reused, full));

  if (pad.ok) {
    const fin::Routing& m = pad.msg;
    if (m.type == fin::MsgType::Register) {
      // The codec reads ids; the router refuses reserved ones. Either way validateId must judge
      // them without trouble, and what it accepts is never reserved.
      for (const std::string* id : {&m.fin_id}) {
        std::string why = fin::validateId(*id);
        if (why.empty()) CHECK(!id->empty() && *id != "soarca" && (*id)[0] != '$');
      }
      for (auto& c : m.capability_ids) (void)fin::validateId(c);
    }
    if (!m.capability_id.empty()) (void)fin::validateId(m.capability_id);
  }
  {
    std::string why = fin::validateId(std::string_view(bytes, size));
    if (why.empty()) {
      CHECK(size > 0 && size <= 1024 && std::string_view(bytes, size) != "soarca" && bytes[0] != '$');
      for (size_t i = 0; i < size; ++i) CHECK(bytes[i] != '+' && bytes[i] != '#' && static_cast<unsigned char>(bytes[i]) >= 0x20);
    }
  }

  // Ack/nack for whatever message_id could be read parse back to it.
  if (pad.msg.message_id_readable) {
    for (bool ack : {true, false}) {
      std::string reply = ack ? fin::makeAck(pad.msg.message_id) : fin::makeNack(pad.msg.message_id);
      fin::ParseResult back = fin::parse(reply);
      CHECK(back.ok);
      CHECK(back.msg.type == (ack ? fin::MsgType::Ack : fin::MsgType::Nack));
      CHECK(back.msg.message_id == pad.msg.message_id);
    }
  }
  checkEscaped(std::string_view(bytes, size));

  // The Python-fin repair keeps a valid command valid, with the same routing fields.
  std::string repaired;
  fin::RepairStats stats;
  if (fin::repairCommandForPythonFin(std::string_view(bytes, size), repaired, stats) && full.ok) {
    fin::ParseResult again;
    fin::parseInto(again, repaired.data(), repaired.size(), repaired.size(), fin::Validation::Full);
    CHECK(again.ok);
    CHECK(sameRouting(again.msg, full.msg));
  }
  return 0;
}
