// The only translation unit of the HTTP plugin that includes simdjson.h.
#include "json_check.hpp"

#include <simdjson.h>

namespace fingate::httpjson {

Info inspect(std::string_view body) {
  Info info;
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  const auto err = parser.parse(body.data(), body.size(), true).get(doc);
  if (err) {
    info.error = simdjson::error_message(err);
    return info;
  }
  info.ok = true;
  if (doc.is_object()) {
    std::string_view s;
    if (!doc["type"].get_string().get(s)) info.type = std::string(s);
    if (!doc["fin_id"].get_string().get(s)) info.fin_id = std::string(s);
  }
  return info;
}

}  // namespace fingate::httpjson
