/**
 * The OpenAI function-calling and Anthropic tool-use shapes of a
 * `PythonTool`, and the conversion of its results into them. Plain
 * structural types: no SDK is imported.
 *
 * @module
 */

import type { ContentPart } from "./format.ts";
import type { PythonToolInputSchema, PythonToolResult } from "./_tool_types.ts";

/** An OpenAI Chat Completions `tools` entry. */
export interface OpenAIFunctionTool {
  /** Always `"function"`. */
  type: "function";
  /** The function. */
  function: {
    /** The tool's name. */
    name: string;
    /** The tool's description. */
    description: string;
    /** The input's JSON Schema. */
    parameters: PythonToolInputSchema;
    /** Always true: the model's arguments follow the schema exactly. */
    strict: true;
  };
}

/** One entry of an OpenAI assistant message's `tool_calls`. */
export interface OpenAIToolCall {
  /** The call's id, echoed as the tool message's `tool_call_id`. */
  id: string;
  /** `"function"`. */
  type?: string;
  /** The function the model called. */
  function: {
    /** The tool's name. */
    name: string;
    /** The model's arguments as a JSON string (possibly malformed). */
    arguments: string;
  };
}

/** An OpenAI Chat Completions tool message. */
export interface OpenAIToolMessage {
  /** Always `"tool"`. */
  role: "tool";
  /** The `id` of the tool call it answers. */
  tool_call_id: string;
  /** The text parts, joined; images are named by a placeholder line. */
  content: string;
}

/** An OpenAI Chat Completions image content part (a data URL). */
export interface OpenAIImagePart {
  /** Always `"image_url"`. */
  type: "image_url";
  /** The image as a `data:` URL. */
  image_url: { url: string };
}

/** What `PythonTool.callOpenAI` returns. */
export interface OpenAIToolOutput {
  /** The tool message answering the call. */
  message: OpenAIToolMessage;
  /**
   * The images, for a `role: "user"` message sent after all the tool
   * messages of the turn (tool messages cannot carry images).
   */
  images: OpenAIImagePart[];
  /** True when the code failed or the call could not run. */
  isError: boolean;
}

/** An Anthropic Messages API `tools` entry. */
export interface AnthropicTool {
  /** The tool's name. */
  name: string;
  /** The tool's description. */
  description: string;
  /** The input's JSON Schema. */
  input_schema: PythonToolInputSchema;
}

/** An Anthropic `tool_use` content block. */
export interface AnthropicToolUseBlock {
  /** Always `"tool_use"`. */
  type: "tool_use";
  /** The block's id, echoed as the result's `tool_use_id`. */
  id: string;
  /** The tool the model called. */
  name: string;
  /** The model's input. */
  input: unknown;
}

/** An Anthropic text content block. */
export interface AnthropicTextBlock {
  /** Always `"text"`. */
  type: "text";
  /** The text. */
  text: string;
}

/** An Anthropic base64 image content block. */
export interface AnthropicImageBlock {
  /** Always `"image"`. */
  type: "image";
  /** The image. */
  source: {
    /** Always `"base64"`. */
    type: "base64";
    /** Its MIME type. */
    media_type: "image/png" | "image/jpeg" | "image/gif" | "image/webp";
    /** Its bytes, base64-encoded. */
    data: string;
  };
}

/** An Anthropic `tool_result` content block. */
export interface AnthropicToolResultBlock {
  /** Always `"tool_result"`. */
  type: "tool_result";
  /** The `id` of the `tool_use` block it answers. */
  tool_use_id: string;
  /** Text and image blocks. */
  content: (AnthropicTextBlock | AnthropicImageBlock)[];
  /** True when the code failed or the call could not run. */
  is_error: boolean;
}

/** The image types both APIs accept. */
const API_IMAGES = ["image/png", "image/jpeg", "image/gif", "image/webp"];

function placeholder(part: ContentPart & { type: "image" }): string {
  return `[${part.mimeType} image]`;
}

/**
 * Converts a tool result to OpenAI's tool message and image parts.
 *
 * @param id The tool call's id.
 * @param out The result.
 * @returns The message, images and `isError`.
 */
export function toOpenAIOutput(
  id: string,
  out: PythonToolResult,
): OpenAIToolOutput {
  const lines: string[] = [];
  const images: OpenAIImagePart[] = [];
  for (const part of out.content) {
    if (part.type === "text") {
      lines.push(part.text);
    } else if (API_IMAGES.includes(part.mimeType)) {
      lines.push(placeholder(part));
      images.push({
        type: "image_url",
        image_url: { url: `data:${part.mimeType};base64,${part.data}` },
      });
    } else {
      lines.push(`${placeholder(part)} (not a type the API accepts)`);
    }
  }
  return {
    message: { role: "tool", tool_call_id: id, content: lines.join("\n\n") },
    images,
    isError: out.isError,
  };
}

/**
 * Converts a tool result to Anthropic's `tool_result` block.
 *
 * @param id The `tool_use` block's id.
 * @param out The result.
 * @returns The block.
 */
export function toAnthropicResult(
  id: string,
  out: PythonToolResult,
): AnthropicToolResultBlock {
  const content: (AnthropicTextBlock | AnthropicImageBlock)[] = out.content
    .map((part) => {
      if (part.type === "text") return { type: "text", text: part.text };
      if (!API_IMAGES.includes(part.mimeType)) {
        return {
          type: "text",
          text: `${placeholder(part)} (not a type the API accepts)`,
        };
      }
      return {
        type: "image",
        source: {
          type: "base64",
          media_type: part.mimeType as AnthropicImageBlock["source"][
            "media_type"
          ],
          data: part.data,
        },
      };
    });
  return {
    type: "tool_result",
    tool_use_id: id,
    content,
    is_error: out.isError,
  };
}
