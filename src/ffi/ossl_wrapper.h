/* OpenSSL 3 declarations that openssl-sys lacks (bindgen input):
 * the provider ABI (store objects included) and, before 4.0, ENGINE. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/core_object.h>
#include <openssl/crypto.h>
#include <openssl/provider.h>
#include <openssl/params.h>
#include <openssl/param_build.h>
#include <openssl/engine.h>
#include <openssl/store.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/obj_mac.h>
