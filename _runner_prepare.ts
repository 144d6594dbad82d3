/**
 * Loading Pyodide before the child knows what to load. Every child starts
 * `loadPyodide()` when it starts, before the init frame arrives: Pyodide's
 * JS is imported, its wasm compiled and instantiated, its standard library
 * installed, and the load then waits for the memory image. A child the host
 * spawned ahead of need (a paused one, see `_pool.ts`) has done all that by
 * the time a session state comes, so a restore costs only the image and
 * Pyodide's bootstrap from it. Runs in the child (`--no-config`: the exact
 * specifiers).
 *
 * Pyodide 314.0.7 takes the snapshot (`_loadSnapshot`) before it makes the
 * module, and reads its header only after: the load is given an empty view
 * of a resizable buffer, which takes the header once it is known. The image
 * itself is written straight into the wasm heap, so Pyodide copies none.
 *
 * @module
 */

import { type Pyodide, U8 } from "./_runner_captured.ts";

/** Pyodide's `loadPyodide()`. */
export type LoadPyodide = (options: never) => Promise<Pyodide>;

/** Pyodide's emscripten module, as far as the runner uses it. */
interface PyodideModule {
  HEAP8: Int8Array;
  _emscripten_resize_heap(size: number): unknown;
}

/** A memory image to load: a snapshot's header and what writes its image. */
export interface Image {
  /** The snapshot's header (its first `offset` bytes). */
  header: Uint8Array;
  /** The byte length of its memory image. */
  imageBytes: number;
  /** Writes the image into the heap (exactly `imageBytes` long). */
  fill(heap: Uint8Array): void;
}

/** A load started before the init frame. */
export interface EarlyLoad {
  /**
   * Gives the started load its image.
   *
   * @param image The image.
   * @returns Pyodide, loaded from the image.
   */
  finish(image: Image): Promise<Pyodide>;
  /** Drops the started load (a mode that loads no image). */
  drop(): void;
  /** `loadPyodide()` itself, for a load of another kind. */
  loadPyodide: LoadPyodide;
}

/** The largest snapshot header taken (its JSON of JS object keys). */
const MAX_HEADER_BYTES = 64 * 1024 * 1024;

/**
 * Starts loading Pyodide up to the point where it needs the memory image.
 *
 * @returns The started load.
 */
export function startLoad(): EarlyLoad {
  // deno-lint-ignore no-import-prefix
  const main = import("npm:pyodide@314.0.7");
  // deno-lint-ignore no-import-prefix
  const asm = import("npm:pyodide@314.0.7/pyodide.asm.mjs");
  const buffer = new ArrayBuffer(0, { maxByteLength: MAX_HEADER_BYTES });
  let give!: (image: Image | undefined) => void;
  const given = new Promise<Image | undefined>((resolve) => give = resolve);
  const createPyodideModule = async (settings: unknown) => {
    const module: PyodideModule = await (await asm).default(settings);
    const image = await given;
    if (!image) throw new Error("The early load was dropped");
    if (image.header.length > MAX_HEADER_BYTES) {
      throw new RangeError("The snapshot header is too large");
    }
    buffer.resize(image.header.length);
    new U8(buffer).set(image.header);
    // Pyodide 314.0.7 never grows the heap for a snapshot (it starts at
    // 36 MiB): a larger image would be "out of bounds".
    if (module.HEAP8.length < image.imageBytes) {
      module._emscripten_resize_heap(image.imageBytes);
    }
    image.fill(new U8(module.HEAP8.buffer, 0, image.imageBytes));
    return module;
  };
  const loading = main.then(({ loadPyodide }) =>
    loadPyodide(
      {
        _loadSnapshot: new U8(buffer),
        _makeSnapshot: true,
        createPyodideModule,
      } as never,
    ) as Promise<Pyodide>
  );
  loading.catch(() => {});
  return {
    finish(image: Image) {
      give(image);
      return loading;
    },
    drop() {
      give(undefined);
    },
    loadPyodide: async (options: never) =>
      await (await main).loadPyodide(options) as Pyodide,
  };
}
