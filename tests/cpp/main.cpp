// Catch2 entry point for the C++ suite (timeshare_tests). Test files live beside it.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
