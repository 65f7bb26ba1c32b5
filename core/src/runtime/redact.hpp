// Redaction of secrets in what the gateway shows: logs, the admin API, error messages.
// Nothing here changes what the gateway stores or forwards (a dead letter stays whole for
// retry); these functions only make the copy that is shown.
#pragma once

#include <string>
#include <string_view>

namespace fingate {

// The mask that replaces a secret.
inline constexpr std::string_view kRedacted = "***";

// One URL: the password of its user-info is replaced ("tcp://user:pass@host" ->
// "tcp://user:***@host"); a user-info without ':' is replaced whole ("https://TOKEN@host" ->
// "https://***@host"). The authority runs from "://" to the first '/', '?' or '#'; its last
// '@' ends the user-info (an unencoded '@' in a password is covered). Anything else is
// returned unchanged.
std::string redactUrlUserinfo(std::string_view url);

// Free text (a log line, an error message, a plugin's state detail, a JSON document): every
// URL with a user-info in it is redacted as above. A URL is recognised by "://" (or ":\/\/" as
// JSON may escape it); its authority ends at '/', '?', '#', whitespace, a control character,
// a quote, '<' or '>' (characters a user-info cannot hold unencoded). The result never has
// more quotes or backslashes than the input, so JSON stays JSON. Text that ends inside an
// authority with a ':' not followed by a port ("tcp://user:pa", a cut-off payload) has the rest
// masked too.
std::string redactText(std::string_view text);

// A JSON document as it will be shown: the value of every member whose key looks like a
// secret (case-insensitive, '_' and '-' ignored, at any depth: password, passwd, passphrase,
// pwd, token, secret, private_key, api_key, authorization, credential, cookie) becomes
// "***"; the members of every `authentication` object (a CACAO command's credentials) keep
// their keys and lose their values. Everything else is copied byte for byte (so the output is
// valid JSON when the input was). Input that is not valid JSON is copied up to the point where
// it stops being readable, then up to the first secret-looking word or escape, then cut with
// "***": a secret is never shown, whatever the bytes.
std::string redactJsonSecrets(std::string_view json);

// A key that names a secret (the rule above).
bool isSecretJsonKey(std::string_view key);

}  // namespace fingate
