/* The httpd and APR declarations the module uses (bindgen input). */
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <http_main.h>
#include <http_core.h>
#include <http_protocol.h>
#include <ap_mpm.h>
#include <apr_optional_hooks.h>
#include <apr_strings.h>
#include <apr_thread_proc.h>
#include <unixd.h>
#include <mpm_common.h>
