// Default locations of the memory layer's files, following the XDG base directory rules:
// <cache>/ethereal/history.sqlite and <cache>/ethereal/logs, where <cache> is $XDG_CACHE_HOME
// when it is set to an absolute path and ~/.cache otherwise.
#pragma once

#include <filesystem>

namespace ethereal::memory {

// The cache directory of the ethereal program, <cache>/ethereal. The home directory is $HOME,
// or the password database entry of the user when HOME is unset or empty. Throws
// InvalidInputError when XDG_CACHE_HOME is not an absolute path and no home directory is known.
std::filesystem::path default_cache_dir();
// <cache>/ethereal/history.sqlite
std::filesystem::path default_history_path();
// <cache>/ethereal/logs
std::filesystem::path default_log_dir();

}  // namespace ethereal::memory
