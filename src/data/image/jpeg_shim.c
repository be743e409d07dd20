/* JPEG decoding for src/data/image/jpeg.rs, with the libjpeg-turbo derivative vendored by the
 * `mozjpeg-sys` crate and the settings of OpenCV's `JpegDecoder` (modules/imgcodecs/src/
 * grfmt_jpeg.cpp, OpenCV 4.11) for `IMREAD_COLOR`: library defaults (accurate integer IDCT
 * JDCT_ISLOW, fancy upsampling), output JCS_EXT_BGR for 1- and 3-component images and JCS_CMYK
 * for 4-component ones (CMYK, or YCCK converted to CMYK by the library); the caller converts
 * CMYK to BGR as OpenCV does.
 *
 * Errors never exit or abort: `error_exit` longjmps back to `beit_jpeg_decode`, which returns
 * non-zero with the library's message. Warnings that mean the compressed data ran out or is
 * garbled (the library would fill the rest of the image with grey) are errors too; other
 * warnings are silent (OpenCV prints them to stderr and keeps the pixels, which are the same).
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "jpeglib.h"
#include "jerror.h"

/* The caller's side: it allocates the output and receives the first EXIF APP1 segment. */
struct beit_jpeg_sink {
  void *ctx;
  /* A buffer for h rows of w * channels bytes (channels 3 = BGR, 4 = CMYK), or NULL to refuse. */
  unsigned char *(*alloc)(void *ctx, unsigned int width, unsigned int height, int channels);
  /* The payload of the first APP1 segment that starts with "Exif\0\0" (after those 6 bytes). */
  void (*exif)(void *ctx, const unsigned char *data, size_t len);
  char message[JMSG_LENGTH_MAX];
};

struct beit_error_mgr {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  struct beit_jpeg_sink *sink;
};

static void beit_error_exit(j_common_ptr cinfo) {
  struct beit_error_mgr *err = (struct beit_error_mgr *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->sink->message);
  longjmp(err->jump, 1);
}

static void beit_emit_message(j_common_ptr cinfo, int msg_level) {
  int code = cinfo->err->msg_code;
  if (msg_level < 0 && (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE ||
                        code == JWRN_ARITH_BAD_CODE || code == JWRN_MUST_RESYNC)) {
    beit_error_exit(cinfo);
  }
  if (msg_level < 0) cinfo->err->num_warnings++;
}

static void beit_output_message(j_common_ptr cinfo) { (void)cinfo; }

/* Returns 0 on success, 1 on a decoding error (message in sink->message). */
int beit_jpeg_decode(const unsigned char *data, size_t len, struct beit_jpeg_sink *sink) {
  struct jpeg_decompress_struct cinfo;
  struct beit_error_mgr err;
  unsigned char *out = NULL;

  memset(&cinfo, 0, sizeof(cinfo));
  sink->message[0] = '\0';
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = beit_error_exit;
  err.pub.emit_message = beit_emit_message;
  err.pub.output_message = beit_output_message;
  err.sink = sink;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_create_decompress(&cinfo);
  if (len == 0 || len > (size_t)(unsigned long)-1) {
    strcpy(sink->message, "empty or oversized input");
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  jpeg_mem_src(&cinfo, data, (unsigned long)len);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);

  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != NULL; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
      sink->exif(sink->ctx, m->data + 6, m->data_length - 6);
      break;
    }
  }

  int channels = cinfo.num_components == 4 ? 4 : 3;
  cinfo.out_color_space = channels == 4 ? JCS_CMYK : JCS_EXT_BGR;
  /* The size check (and the caller's buffer) come before jpeg_start_decompress, which would
   * allocate the whole-image coefficient buffer of a progressive JPEG. */
  jpeg_calc_output_dimensions(&cinfo);
  if (cinfo.output_components != channels) {
    snprintf(sink->message, JMSG_LENGTH_MAX, "unexpected %d output components", cinfo.output_components);
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  out = sink->alloc(sink->ctx, cinfo.output_width, cinfo.output_height, channels);
  if (out == NULL) {
    snprintf(sink->message, JMSG_LENGTH_MAX, "image of %ux%u pixels is too large", cinfo.output_width,
             cinfo.output_height);
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  JDIMENSION width = cinfo.output_width, height = cinfo.output_height;
  jpeg_start_decompress(&cinfo);
  if (cinfo.output_components != channels || cinfo.output_width != width || cinfo.output_height != height) {
    strcpy(sink->message, "output shape changed while starting");
    jpeg_destroy_decompress(&cinfo);
    return 1;
  }
  size_t stride = (size_t)cinfo.output_width * (size_t)channels;
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out + (size_t)cinfo.output_scanline * stride;
    if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) { /* cannot happen with a memory source */
      strcpy(sink->message, "the decoder made no progress");
      jpeg_destroy_decompress(&cinfo);
      return 1;
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}
