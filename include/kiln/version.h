/* kiln's version, written in this one place: CMakeLists.txt reads it from here for
 * the shared library's soname (libkiln.so.MAJOR), the CMake package and pkg-config.
 * kiln_version() (core.h) is the version of the library a program runs with. */
#ifndef KILN_VERSION_H
#define KILN_VERSION_H

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 3
#define KILN_VERSION_PATCH 0

#define KILN_VERSION_STR_(a, b, c) #a "." #b "." #c
#define KILN_VERSION_STR(a, b, c) KILN_VERSION_STR_(a, b, c)
#define KILN_VERSION KILN_VERSION_STR(KILN_VERSION_MAJOR, KILN_VERSION_MINOR, KILN_VERSION_PATCH)

#endif
