#include "memory/paths.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "runtime/error.h"

namespace ethereal::memory {

namespace {

namespace fs = std::filesystem;

fs::path home_dir() {
  const char* home = std::getenv("HOME");
  if (home != nullptr && *home != '\0') {
    return fs::path(home);
  }
  passwd entry{};
  passwd* found = nullptr;
  std::vector<char> buffer(16384);
  if (::getpwuid_r(::getuid(), &entry, buffer.data(), buffer.size(), &found) == 0 &&
      found != nullptr && found->pw_dir != nullptr && *found->pw_dir != '\0') {
    return fs::path(found->pw_dir);
  }
  throw InvalidInputError(
      "cannot find the cache directory: XDG_CACHE_HOME is not an absolute path, HOME is not set "
      "and the user has no home directory; set XDG_CACHE_HOME or HOME, or give the path "
      "explicitly");
}

}  // namespace

fs::path default_cache_dir() {
  const char* xdg_cache = std::getenv("XDG_CACHE_HOME");
  // The XDG Base Directory Specification requires ignoring a relative XDG_CACHE_HOME.
  if (xdg_cache != nullptr && fs::path(xdg_cache).is_absolute()) {
    return fs::path(xdg_cache) / "ethereal";
  }
  return home_dir() / ".cache" / "ethereal";
}

fs::path default_history_path() {
  return default_cache_dir() / "history.sqlite";
}

fs::path default_log_dir() {
  return default_cache_dir() / "logs";
}

}  // namespace ethereal::memory
